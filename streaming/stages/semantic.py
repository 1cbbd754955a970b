"""Semantic stage: text → semantic tokens, one token per stream per step.

Every sampled token is published to `segment.semantic` at once, so the coarse
stage can use it on the same engine tick. All semantic prompts are 257
positions long, so any set of new streams prefills as one batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..constants import MAX_SEMANTIC_STEPS, SEMANTIC_PAD_TOKEN, SEMANTIC_VOCAB_SIZE
from ..models.gpt import GPT
from ..params import SamplingParams
from ..prompts import semantic_prompt
from ..sampling import sample
from ..segment import Segment, for_each_row


class SemanticStage:
    """Owns the text model's KV cache; advances batches of segments."""

    name = "semantic"

    def __init__(self, model: GPT, n_slots: int) -> None:
        self.model = model
        self.cache = model.new_cache(n_slots)

    @staticmethod
    def wants(seg: Segment) -> str | None:
        """'prefill', 'decode' or None (nothing to do)."""
        if seg.sem.done:
            return None
        return "prefill" if seg.sem.slot is None else "decode"

    def prefill(self, segs: list[Segment], params: list[SamplingParams]) -> None:
        """Start segments: prompt [B, 513] (merged to 257 positions), then sample token 0."""
        device = self.model.lm_head.weight.device
        for seg in segs:
            if seg.sem.slot is None:
                seg.sem.slot = self.cache.allocate()
        hist = [None if s.voice is None else s.voice.semantic for s in segs]
        prompts = np.stack([semantic_prompt(s.text_ids, h) for s, h in zip(segs, hist)])
        logits = self.model.prefill(torch.as_tensor(prompts, device=device), self.cache,
                                    [s.sem.slot for s in segs], merge_context=True)  # [B, V]
        self._accept(segs, params, logits)

    def decode(self, segs: list[Segment], params: list[SamplingParams]) -> None:
        """Feed each segment's pending token, sample the next one."""
        device = self.model.lm_head.weight.device
        tokens = torch.tensor([s.sem.pending for s in segs], device=device)
        logits = self.model.decode(tokens, self.cache, [s.sem.slot for s in segs])  # [B, V]
        self._accept(segs, params, logits)

    def _accept(self, segs: list[Segment], params: list[SamplingParams], logits: torch.Tensor) -> None:
        relevant = logits[:, : SEMANTIC_VOCAB_SIZE + 1].float().cpu()  # 10,000 tokens + EOS
        for_each_row(list(zip(segs, params, relevant)), self._accept_row)

    def _accept_row(self, seg: Segment, p: SamplingParams, row: torch.Tensor) -> None:
        token, probs = sample(row, temp=p.text_temp, top_k=p.semantic_top_k, top_p=p.top_p,
                              generator=seg.generator)
        eos_p = float(probs[-1]) if probs is not None else float(token == SEMANTIC_PAD_TOKEN)
        if token == SEMANTIC_PAD_TOKEN or eos_p >= p.min_eos_p:
            self.finish(seg)
            return
        seg.semantic.append(token)
        seg.sem.pending = token
        cap = min(p.max_semantic_tokens or MAX_SEMANTIC_STEPS, MAX_SEMANTIC_STEPS)
        if len(seg.semantic) >= cap:
            self.finish(seg)

    def finish(self, seg: Segment) -> None:
        """Mark the segment's semantic tokens complete and free its slot."""
        seg.sem.done = True
        seg.sem.pending = None
        self.release(seg)

    def release(self, seg: Segment) -> None:
        if seg.sem.slot is not None:
            self.cache.release(seg.sem.slot)
            seg.sem.slot = None
