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
from ..params import SamplingParams, StreamPolicy
from ..prompts import coarse_window_semantic_span, semantic_prompt
from ..segment import Segment, for_each_row
from .base import StageWork
from .causal import CausalStage

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


class SemanticStage(CausalStage):
    """Owns the text model's KV cache; advances batches of segments."""

    name = "semantic"
    model_actions = frozenset({"prefill", "step"})
    rows = None  # the text model's whole head (semantic tokens + EOS are read from it)

    def work(self, seg: Segment, policy: StreamPolicy) -> StageWork | None:
        if seg.sem.done:
            return None
        if seg.sem.slot is None:
            return StageWork("prefill", cost=SEMANTIC_PROMPT_LEN + max(0, len(seg.semantic) - 1), needs_slot=True)
        return None if semantic_ahead(seg) else StageWork("step")

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        if action == "prefill":  # prompt [B, 513] (merged to 257 positions), then sample token 0
            for seg in segs:
                if seg.sem.slot is None:
                    seg.sem.slot = self.cache.allocate()
            # a resumed segment (evicted while its reader stalled) re-reads the tokens it had fed
            prompts = [np.concatenate([semantic_prompt(s.text_ids, None if s.voice is None else s.voice.semantic),
                                       np.asarray(s.semantic[:-1] if s.sem.pending is not None else [], np.int64)])
                       for s in segs]
            batch = self.prefill_rows(segs, params, [s.sem.slot for s in segs], prompts,
                                      [s.sem.pending is None for s in segs], merge=True, offset=MAX_TEXT_TOKENS)
            if batch is None:
                return
        else:  # feed each segment's pending token
            batch = self.step_rows(segs, params, [s.sem.pending for s in segs], [s.sem.slot for s in segs])
        segs, params, logits = batch
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
