"""Semantic stage: text → semantic tokens, one token per stream per step.

Every sampled token is published to `segment.semantic` at once, so the coarse
stage can use it on the same engine tick. All semantic prompts are 257
positions long, so any set of new streams prefills as one batch; every step
advances all running streams in one model call.
"""

from __future__ import annotations

import numpy as np

from ..bark import semantic_cap, semantic_step
from ..constants import COARSE_WINDOW_LEN, MAX_TEXT_TOKENS, SEMANTIC_PROMPT_LEN
from ..devices import upload
from ..models.gpt import GPT
from ..models.static_step import StaticDecoder
from ..params import SamplingParams, StreamPolicy
from ..prompts import coarse_window_semantic_span, semantic_prompt
from ..segment import Segment, for_each_row
from .base import StageWork, by_slot

ROWS = None  # the text model's whole head (semantic tokens + EOS are read from it)
SEMANTIC_LEAD = 8  # semantic tokens (~0.16 s of speech) kept ready beyond the next coarse window's needs


def semantic_ahead(seg: Segment) -> bool:
    """True when the segment's semantic tokens already cover the next coarse window plus SEMANTIC_LEAD.

    The semantic stage then skips its step: the tick's time goes to the coarse
    stage, which is what the first audio waits for. Tokens are unaffected. (This
    reads the coarse stage's progress: a pacing decision, never an input.)
    """
    co = seg.co
    if co is None or co.done:
        return False
    next_window = -(-co.n_step // COARSE_WINDOW_LEN) * COARSE_WINDOW_LEN  # next multiple of 60
    _, end = coarse_window_semantic_span(len(co.sem_hist), next_window)
    return len(co.sem_hist) + len(seg.semantic) >= end + SEMANTIC_LEAD


class SemanticStage:
    """Owns the text model's KV cache; advances batches of segments."""

    name = "semantic"
    model_actions = frozenset({"prefill", "step"})

    def __init__(self, model: GPT, n_slots: int, *, static: bool = False, graphs: bool = False) -> None:
        self.model = model
        self.cache = model.new_cache(n_slots + 1 if (static or graphs) else n_slots)
        self.static = None  # steps at bucketed static shapes (CUDA graphs on GPUs): models/static_step.py
        if static or graphs:
            self.static = StaticDecoder(model, self.cache, self.cache.allocate(), ROWS, graphs=graphs)

    def free_slots(self) -> int:
        return self.cache.n_free

    def work(self, seg: Segment, policy: StreamPolicy) -> StageWork | None:
        if seg.sem.done:
            return None
        if seg.sem.slot is None:
            return StageWork("prefill", cost=SEMANTIC_PROMPT_LEN + max(0, len(seg.semantic) - 1), needs_slot=True)
        return None if semantic_ahead(seg) else StageWork("step")

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        device = self.model.transformer.wte.weight.device
        if action == "prefill":  # prompt [B, 513] (merged to 257 positions), then sample token 0
            for seg in segs:
                if seg.sem.slot is None:
                    seg.sem.slot = self.cache.allocate()
            # a resumed segment (evicted while its reader stalled) re-reads the tokens it had fed
            prompts = [np.concatenate([semantic_prompt(s.text_ids, None if s.voice is None else s.voice.semantic),
                                       np.asarray(s.semantic[:-1] if s.sem.pending is not None else [], np.int64)])
                       for s in segs]
            lengths = [len(p) - MAX_TEXT_TOKENS for p in prompts]  # positions after merging text and history
            idx = np.zeros((len(prompts), max(len(p) for p in prompts)), dtype=np.int64)
            for row, p in zip(idx, prompts):
                row[: len(p)] = p
            logits = self.model.prefill(upload(idx, device), self.cache, [s.sem.slot for s in segs],
                                        merge_context=True, lengths=lengths)  # [B, V]
            fresh = [i for i, s in enumerate(segs) if s.sem.pending is None]  # resumed ones keep their pending token
            if len(fresh) < len(segs):
                if not fresh:
                    return
                segs, params = [segs[i] for i in fresh], [params[i] for i in fresh]
                logits = logits[upload(fresh, logits.device)]
        else:  # feed each segment's pending token
            order = by_slot([s.sem.slot for s in segs])
            segs, params = [segs[i] for i in order], [params[i] for i in order]
            pending, slots = [s.sem.pending for s in segs], [s.sem.slot for s in segs]
            if self.static is not None:
                logits = self.static(pending, slots)
            else:
                logits = self.model.decode(upload(pending, device), self.cache, slots)  # [B, V]
        tokens, ended = semantic_step(logits, params, [s.generator for s in segs])
        for_each_row(list(zip(segs, params, tokens.tolist(), ended.tolist())), self._accept_row)

    def _accept_row(self, seg: Segment, p: SamplingParams, token: int, ended: bool) -> None:
        if ended:
            self.finish(seg)
            return
        seg.semantic.append(token)
        seg.sem.pending = token
        if len(seg.semantic) >= semantic_cap(p):
            self.finish(seg)

    def finish(self, seg: Segment) -> None:
        """Mark the segment's semantic tokens complete and free its slot."""
        seg.sem.done = True
        seg.sem.pending = None
        self.release(seg)

    def release(self, seg: Segment) -> None:
        """Give the slot back. A segment still generating can resume later: its next prefill re-reads
        the prompt and the tokens it had fed (same numbers up to float rounding of a prefill)."""
        if seg.sem.slot is not None:
            self.cache.release(seg.sem.slot)
            seg.sem.slot = None
