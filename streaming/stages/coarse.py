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
import torch

from ..constants import COARSE_WINDOW_LEN, SEMANTIC_TO_COARSE_RATIO
from ..models.gpt import GPT
from ..params import SamplingParams, StreamPolicy
from ..prompts import (
    COARSE_HEAD_ROWS,
    coarse_history,
    coarse_logit_range,
    coarse_n_steps,
    coarse_window_prompt,
    coarse_window_semantic_span,
)
from ..sampling import sample
from ..segment import CoarseState, Segment, for_each_row


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


class CoarseStage:
    """Owns the coarse model's KV cache; opens windows and steps batches."""

    name = "coarse"

    def __init__(self, model: GPT, n_slots: int) -> None:
        self.model = model
        self.cache = model.new_cache(n_slots)

    @staticmethod
    def wants(seg: Segment, policy: StreamPolicy) -> str | None:
        """'prefill' (open a window), 'decode' (step inside one) or None."""
        if not (seg.sem.done or seg.semantic):
            return None
        st = ensure_state(seg)
        if st.done:
            return None
        if seg.sem.done and st.n_step >= coarse_n_steps(len(seg.semantic)):
            return "finish"
        if st.window_pos == 0:
            return "prefill" if window_ready(seg, policy) else None
        return "decode" if (seg.sem.done or st.n_step < step_bound(seg)) else None

    def prefill(self, seg: Segment, params: SamplingParams) -> None:
        """Open a window for one segment: rebuild its KV cache from the window prompt."""
        st = ensure_state(seg)
        if st.slot is None:
            st.slot = self.cache.allocate()
        x_semantic = np.concatenate([st.sem_hist, np.asarray(seg.semantic, dtype=np.int64)])
        start, end = coarse_window_semantic_span(len(st.sem_hist), st.n_step)
        tokens = np.concatenate([st.coarse_hist, np.asarray(seg.coarse, dtype=np.int64)])
        prompt = coarse_window_prompt(x_semantic[start:end], tokens)
        device = self.model.lm_head.weight.device
        logits = self.model.prefill(torch.as_tensor(prompt, device=device)[None], self.cache, [st.slot],
                                    rows=COARSE_HEAD_ROWS)  # [1, 2048]
        self._accept([seg], [params], logits)

    def decode(self, segs: list[Segment], params: list[SamplingParams]) -> None:
        """Feed each segment's pending token and sample the next."""
        device = self.model.lm_head.weight.device
        tokens = torch.tensor([s.co.pending for s in segs], device=device)
        logits = self.model.decode(tokens, self.cache, [s.co.slot for s in segs], rows=COARSE_HEAD_ROWS)
        self._accept(segs, params, logits)

    def _accept(self, segs: list[Segment], params: list[SamplingParams], logits: torch.Tensor) -> None:
        for_each_row(list(zip(segs, params, logits)), self._accept_row)

    def _accept_row(self, seg: Segment, p: SamplingParams, row: torch.Tensor) -> None:
        st = seg.co
        lo, hi = coarse_logit_range(st.n_step)
        first = COARSE_HEAD_ROWS[0]  # row holds logits of vocabulary [10000, 12048)
        code, _ = sample(row[lo - first:hi - first].float().cpu(), temp=p.coarse_temp, top_k=p.semantic_top_k,
                         top_p=p.top_p, generator=seg.generator)
        seg.coarse.append(code + lo)
        st.pending = code + lo
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
