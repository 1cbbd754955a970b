"""What the two causal-GPT stages (semantic, coarse) share: a KV cache with slots, ragged prompt prefills in
one padded call, and decode steps for a whole batch (dynamic shapes, or static shapes / CUDA graphs)."""

from __future__ import annotations

import numpy as np
import torch

from ..devices import upload
from ..models.gpt import GPT
from ..models.static_step import StaticDecoder
from ..params import SamplingParams
from ..segment import Segment
from .base import by_slot


class CausalStage:
    """Base of SemanticStage and CoarseStage: owns the model's KV cache (and its static step, if any)."""

    rows: tuple[int, int] | None = None  # vocabulary rows the stage samples from (None: the whole head)

    def __init__(self, model: GPT, n_slots: int, *, static: bool = False, graphs: bool = False,
                 extra_slots: int = 0) -> None:
        self.model = model
        self.cache = model.new_cache(n_slots + extra_slots + (1 if (static or graphs) else 0))
        self.static = None  # steps at bucketed static shapes (CUDA graphs on GPUs): models/static_step.py
        if static or graphs:
            self.static = StaticDecoder(model, self.cache, self.cache.allocate(), self.rows, graphs=graphs)

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def free_slots(self) -> int:
        return self.cache.n_free

    def prefill_rows(self, segs: list[Segment], params: list[SamplingParams], slots: list[int],
                     prompts: list[np.ndarray], fresh: list[bool], *, merge: bool = False, offset: int = 0):
        """Prefill ragged prompts in one right-padded call (causal attention never sees the padding).

        `offset`: prompt tokens merged away before positions count (the semantic prompt's 256).
        Returns (segs, params, logits) of the `fresh` rows, the ones that sample a token now; a resumed
        row (rebuilding its cache after eviction) keeps the token it had. None when no row samples.
        """
        lengths = [len(p) - offset for p in prompts]
        idx = np.zeros((len(prompts), max(len(p) for p in prompts)), dtype=np.int64)
        for row, p in zip(idx, prompts):
            row[: len(p)] = p
        logits = self.model.prefill(upload(idx, self.device), self.cache, slots, merge_context=merge,
                                    rows=self.rows, lengths=lengths)
        keep = [i for i, f in enumerate(fresh) if f]
        if not keep:
            return None
        if len(keep) < len(segs):
            segs, params = [segs[i] for i in keep], [params[i] for i in keep]
            logits = logits[upload(keep, logits.device)]
        return segs, params, logits

    def step_rows(self, segs: list[Segment], params: list[SamplingParams], pending: list[int], slots: list[int]):
        """Feed each row's pending token in one call; rows sorted by slot (consecutive slots read as views).
        Returns (segs, params, logits) in that order."""
        order = by_slot(slots)
        segs, params = [segs[i] for i in order], [params[i] for i in order]
        pending, slots = [pending[i] for i in order], [slots[i] for i in order]
        if self.static is not None:
            return segs, params, self.static(pending, slots)
        return segs, params, self.model.decode(upload(pending, self.device), self.cache, slots, rows=self.rows)
