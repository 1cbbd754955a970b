"""Coarse stage: semantic → coarse codes in Bark's sliding windows, fed as semantic tokens arrive.

Window geometry is Bark's (see prompts.py): a window opens after every 60 coarse
tokens, reads semantic tokens [start, start + 256) with start = n_hist +
round(n_step / 3.006) - 209, rebuilds the KV cache from its prompt, then samples
up to 60 tokens. When a window may open is the lookahead policy:

- ``exact``: only once every semantic token the window reads exists (or the
  semantic stage has ended). Tokens are then identical to offline Bark.
- ``bounded``: once the semantic tokens up to `max_lookahead` past the window's
  alignment point exist; the rest of the window is padded as at the end of an
  utterance. Less waiting, but the window sees less of the future than offline.

A step inside a window needs n_step < coarse_n_steps(len(semantic so far)),
which never exceeds the final step count, so no step is ever taken that
offline Bark would not take. Each token is published to `segment.coarse` at once.
"""

from __future__ import annotations

import numpy as np

from ..bark import coarse_step
from ..constants import COARSE_SEMANTIC_WINDOW, COARSE_WINDOW_LEN, MAX_COARSE_HISTORY, SEMANTIC_TO_COARSE_RATIO
from ..params import SamplingParams, StreamPolicy
from ..prompts import (
    COARSE_HEAD_ROWS,
    coarse_history,
    coarse_n_steps,
    coarse_window_prompt,
    coarse_window_semantic_span,
)
from ..segment import CoarseState, Segment, for_each_row
from .base import StageWork
from .causal import CausalStage


def ensure_state(seg: Segment) -> CoarseState:
    if seg.co is None:
        v = seg.voice
        sem_hist, coarse_hist = coarse_history(None if v is None else v.semantic, None if v is None else v.coarse)
        seg.co = CoarseState(sem_hist=sem_hist, coarse_hist=coarse_hist)
    return seg.co


def step_bound(seg: Segment) -> int:
    """Coarse tokens that are certain to be generated, given the semantic tokens so far."""
    return coarse_n_steps(len(seg.semantic))


def window_ready(seg: Segment, policy: StreamPolicy) -> bool:
    """May a new window open now? (The policy's lookahead rule.)"""
    st = ensure_state(seg)
    if seg.sem.done:
        return True
    if st.n_step >= step_bound(seg):
        return False
    n_hist = len(st.sem_hist)
    have = n_hist + len(seg.semantic)  # combined semantic array length
    _, end = coarse_window_semantic_span(n_hist, st.n_step)
    if policy.lookahead == "exact":
        return have >= end
    aligned = n_hist + int(round(st.n_step / SEMANTIC_TO_COARSE_RATIO))
    return have >= min(end, aligned + policy.max_lookahead)


def window_prompt(seg: Segment) -> np.ndarray:
    """int64 [<= 887]: the prompt of the segment's next window (Bark's layout, prompts.py)."""
    st = ensure_state(seg)
    x_semantic = np.concatenate([st.sem_hist, np.asarray(seg.semantic, dtype=np.int64)])
    start, end = coarse_window_semantic_span(len(st.sem_hist), st.n_step)
    tokens = np.concatenate([st.coarse_hist, np.asarray(seg.coarse, dtype=np.int64)])
    return coarse_window_prompt(x_semantic[start:end], tokens)


def resume_prompt(seg: Segment) -> np.ndarray:
    """The open window's prompt plus the tokens it had fed: rebuilds an evicted segment's cache exactly
    as it was (the pending token, sampled but not fed, is fed by the next step)."""
    st = seg.co
    fed = seg.coarse[st.n_step - st.window_pos: st.n_step - 1]
    return np.concatenate([st.window_prompt, np.asarray(fed, dtype=np.int64)])


def prompt_length(seg: Segment) -> int:
    """Positions of the next window's prompt (256 semantic + infer + <= 630 coarse history)."""
    st = ensure_state(seg)
    return COARSE_SEMANTIC_WINDOW + 1 + min(MAX_COARSE_HISTORY, len(st.coarse_hist) + len(seg.coarse))


class CoarseStage(CausalStage):
    """Owns the coarse model's KV cache; opens windows and steps batches."""

    name = "coarse"
    model_actions = frozenset({"prefill", "step"})
    rows = COARSE_HEAD_ROWS  # the coarse step needs only the two coarse codebooks' logits

    def work(self, seg: Segment, policy: StreamPolicy) -> StageWork | None:
        """'prefill' (open a window), 'step' (inside one), 'finish' (all steps taken) or None."""
        if not (seg.sem.done or seg.semantic):
            return None
        st = ensure_state(seg)
        if st.done:
            return None
        if seg.sem.done and st.n_step >= coarse_n_steps(len(seg.semantic)):
            return StageWork("finish")
        if st.window_pos == 0:
            if not window_ready(seg, policy):
                return None
            return StageWork("prefill", cost=prompt_length(seg), needs_slot=st.slot is None)
        if st.slot is None:  # evicted inside a window: rebuild its cache (prompt + tokens fed), then go on
            return StageWork("prefill", cost=len(st.window_prompt) + st.window_pos - 1, needs_slot=True)
        return StageWork("step") if (seg.sem.done or st.n_step < step_bound(seg)) else None

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        if action == "finish":
            for seg in segs:
                self.finish(seg)
            return
        if action == "prefill":  # rebuild each window's KV cache from its prompt, ragged prompts in one call
            for seg in segs:
                if seg.co.slot is None:
                    seg.co.slot = self.cache.allocate()
            prompts = [resume_prompt(seg) if seg.co.window_pos else window_prompt(seg) for seg in segs]
            for seg, p in zip(segs, prompts):
                if not seg.co.window_pos:
                    seg.co.window_prompt = p
            batch = self.prefill_rows(segs, params, [s.co.slot for s in segs], prompts,
                                      [s.co.window_pos == 0 for s in segs])
            if batch is None:
                return
        else:  # feed each segment's pending token
            batch = self.step_rows(segs, params, [s.co.pending for s in segs], [s.co.slot for s in segs])
        segs, params, logits = batch
        tokens = coarse_step(logits, [s.co.n_step for s in segs], params, [s.generator for s in segs])
        for_each_row(list(zip(segs, tokens.tolist())), self._accept_row)

    def _accept_row(self, seg: Segment, token: int) -> None:
        st = seg.co
        seg.coarse.append(token)
        st.pending = token
        st.n_step += 1
        st.window_pos += 1
        if st.window_pos == COARSE_WINDOW_LEN:
            st.window_pos = 0  # the next token needs a new window
        if seg.sem.done and st.n_step >= coarse_n_steps(len(seg.semantic)):
            self.finish(seg)

    def finish(self, seg: Segment) -> None:
        st = ensure_state(seg)
        st.done = True
        st.pending = None
        self.release(seg)

    def release(self, seg: Segment) -> None:
        if seg.co is not None and seg.co.slot is not None:
            self.cache.release(seg.co.slot)
            seg.co.slot = None
