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

The next window's prompt, off the critical path: attention is causal, so the keys
and values of a prompt prefix depend only on that prefix. Window w+1's prompt is
its semantic slice, the infer token and the last <= 630 coarse tokens, of which
only the last 60 are made by window w. As soon as the slice's semantic tokens
exist, that prefix is computed into a second KV slot in chunks, each riding along
with a decode step of window w (one pass over the weights on CPUs; a separate
batched call beside the static-shape GPU step). When window w+1 opens, the two
slots swap and only the positions still missing (the 60 new tokens) are
computed. The prefix is checked token for token against the real prompt before
use; on any difference (or without a free prefix slot) the window is prefilled
whole as before, so tokens never depend on it beyond float rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from ..bark import coarse_step
from ..constants import COARSE_SEMANTIC_WINDOW, COARSE_WINDOW_LEN, MAX_COARSE_HISTORY, SEMANTIC_TO_COARSE_RATIO
from ..models.gpt import GPT
from ..models.quant import Int8Linear
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


def next_prefix(seg: Segment) -> np.ndarray | None:
    """While a window is open: the part of the next window's prompt already fixed (its semantic slice, the
    infer token, the coarse history made before this window), or None if the next window is not certain
    yet or its semantic slice is not complete."""
    st = seg.co
    nxt = st.n_step - st.window_pos + COARSE_WINDOW_LEN  # coarse tokens before the next window
    if nxt >= step_bound(seg):  # the next window may never open
        return None
    n_hist = len(st.sem_hist)
    start, end = coarse_window_semantic_span(n_hist, nxt)
    if not seg.sem.done and n_hist + len(seg.semantic) < end:
        return None
    x_semantic = np.concatenate([st.sem_hist, np.asarray(seg.semantic[: max(0, end - n_hist)], dtype=np.int64)])
    made = len(st.coarse_hist) + nxt  # coarse tokens before the next window
    known = np.concatenate([st.coarse_hist, np.asarray(seg.coarse[: nxt - COARSE_WINDOW_LEN], dtype=np.int64)])
    prompt = coarse_window_prompt(x_semantic[start:end], known)  # its coarse part: the last <= 630 known
    drop = max(0, made - MAX_COARSE_HISTORY) - max(0, len(known) - MAX_COARSE_HISTORY)  # scrolled out by then
    keep = COARSE_SEMANTIC_WINDOW + 1
    return np.concatenate([prompt[:keep], prompt[keep + drop:]])


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


PREFIX_MIN_CHUNK = 16  # prefix positions riding along with one decode step, at least
PREFIX_MARGIN = 4  # steps before the window's end by which the prefix should be complete


class CoarseStage(CausalStage):
    """Owns the coarse model's KV cache; opens windows, steps batches, prepares the next window's prefix."""

    name = "coarse"
    model_actions = frozenset({"prefill", "step"})
    rows = COARSE_HEAD_ROWS  # the coarse step needs only the two coarse codebooks' logits

    def __init__(self, model: GPT, n_slots: int, *, static: bool = False, graphs: bool = False,
                 prefix_slots: int | None = None) -> None:
        """`prefix_slots`: extra KV slots for next-window prefixes (None: one per stream; 0: off)."""
        self.n_prefix = n_slots if prefix_slots is None else prefix_slots
        super().__init__(model, n_slots, static=static, graphs=graphs, extra_slots=self.n_prefix)
        self.n_main = n_slots
        # Ride along with decode steps only where a step's pass absorbs a chunk cheaply: float weights and
        # dynamic shapes. Static-shape steps (GPUs) keep their own batched chunk calls. The CPU int8 kernel
        # slows down with every extra row (measured: a single stream's total x1.17), so int8 models prepare
        # each prefix in one separate call, as soon as it is known: same work as a whole prefill, off the boundary.
        quantized = any(isinstance(m, Int8Linear) for m in model.modules())
        self.ride_along = self.static is None and not quantized
        self.whole_prefix = quantized
        self.main_held = 0
        self.prefix_held = 0
        self.prefix_positions = 0  # prefix positions computed beside decode steps (counter)
        self.prefix_used = 0  # windows opened on a prepared prefix (counter)

    def free_slots(self) -> int:
        return self.n_main - self.main_held

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
            cost = prompt_length(seg) - (st.prefix_done if st.prefix is not None else 0)
            return StageWork("prefill", cost=cost, needs_slot=st.slot is None)
        if st.slot is None:  # evicted inside a window: rebuild its cache (prompt + tokens fed), then go on
            return StageWork("prefill", cost=len(st.window_prompt) + st.window_pos - 1, needs_slot=True)
        return StageWork("step") if (seg.sem.done or st.n_step < step_bound(seg)) else None

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        if action == "finish":
            for seg in segs:
                self.finish(seg)
            return
        if action == "prefill":
            batch = self._open_windows(segs, params)
            if batch is None:
                return
        else:
            batch = self._step(segs, params)
        segs, params, logits = batch
        tokens = coarse_step(logits, [s.co.n_step for s in segs], params, [s.generator for s in segs])
        for_each_row(list(zip(segs, tokens.tolist())), self._accept_row)

    # ---------------------------------------------------------------- windows
    def _open_windows(self, segs: list[Segment], params: list[SamplingParams]):
        """Open each segment's next window (or rebuild an evicted one's): a segment whose prepared prefix
        matches its prompt swaps it in and computes only the rest; the others prefill their prompts whole,
        ragged prompts in one call. Returns (segs, params, logits) of the rows that sample now."""
        plain, chunked = [], []
        for i, seg in enumerate(segs):
            st = seg.co
            if st.slot is None:
                st.slot = self.cache.allocate()
                self.main_held += 1
            if st.window_pos:  # resuming after eviction
                plain.append((i, resume_prompt(seg)))
                continue
            prompt = st.window_prompt = window_prompt(seg)
            if self._take_prefix(seg, prompt):
                chunked.append((i, prompt))
            else:
                plain.append((i, prompt))
        rows: list[tuple[int, torch.Tensor]] = []
        if plain:
            p_segs = [segs[i] for i, _ in plain]
            got = self.prefill_rows(p_segs, [params[i] for i, _ in plain], [s.co.slot for s in p_segs],
                                    [p for _, p in plain], [s.co.window_pos == 0 for s in p_segs])
            if got is not None:
                keep = [i for i, _ in plain if segs[i].co.window_pos == 0]
                rows += list(zip(keep, got[2]))
        if chunked:
            c_segs = [segs[i] for i, _ in chunked]
            tails = [p[self.cache.lengths[s.co.slot]:] for s, (_, p) in zip(c_segs, chunked)]
            logits = self.model.extend(tails, self.cache, [s.co.slot for s in c_segs], rows=self.rows,
                                       logits_of=list(range(len(c_segs))))
            rows += list(zip([i for i, _ in chunked], logits))
        for seg in segs:
            self._drop_prefix(seg)
        if not rows:
            return None
        rows.sort(key=lambda r: r[0])
        return [segs[i] for i, _ in rows], [params[i] for i, _ in rows], torch.stack([l for _, l in rows])

    def _take_prefix(self, seg: Segment, prompt: np.ndarray) -> bool:
        """Swap in the segment's prepared prefix if it is exactly the start of `prompt`."""
        st = seg.co
        if st.prefix is None or st.prefix_done == 0 or len(st.prefix) > len(prompt):
            return False
        if not np.array_equal(st.prefix, prompt[: len(st.prefix)]):
            return False
        st.slot, st.prefix_slot = st.prefix_slot, st.slot  # the old window's slot prepares the next prefix
        self.prefix_used += 1
        return True

    # ----------------------------------------------------------------- steps
    def _step(self, segs: list[Segment], params: list[SamplingParams]):
        """Feed each segment's pending token; prefix chunks of the next windows ride along."""
        chunks = [(seg, c) for seg in segs if (c := self._prefix_chunk(seg)) is not None]
        if not chunks or not self.ride_along:
            batch = self.step_rows(segs, params, [s.co.pending for s in segs], [s.co.slot for s in segs])
            if chunks:  # the prefix chunks are their own batched call
                self.model.extend([c for _, c in chunks], self.cache, [s.co.prefix_slot for s, _ in chunks])
        else:  # one pass over the weights for the decode tokens and the prefix chunks together
            pending = [np.asarray([s.co.pending], dtype=np.int64) for s in segs]
            logits = self.model.extend(pending + [c for _, c in chunks], self.cache,
                                       [s.co.slot for s in segs] + [s.co.prefix_slot for s, _ in chunks],
                                       rows=self.rows, logits_of=list(range(len(segs))))
            batch = (segs, params, logits)
        for seg, c in chunks:
            seg.co.prefix_done += len(c)
            self.prefix_positions += len(c)
        return batch

    def _prefix_chunk(self, seg: Segment) -> np.ndarray | None:
        """The next positions of the next window's prefix to compute beside this step, or None."""
        st = seg.co
        if st.prefix is None:
            if self.n_prefix == 0 or (st.prefix_slot is None and self.prefix_held >= self.n_prefix):
                return None
            if seg.dec.n_decoded == 0:
                return None  # nothing decoded yet (first audio on its way, or the offline fine policy): keep it lean
            prefix = next_prefix(seg)
            if prefix is None:
                return None
            if st.prefix_slot is None:
                st.prefix_slot = self.cache.allocate()
                self.prefix_held += 1
            self.cache.reset(st.prefix_slot)
            st.prefix, st.prefix_done = prefix, 0
        left = len(st.prefix) - st.prefix_done
        if left == 0:
            return None
        if self.whole_prefix:
            return st.prefix[st.prefix_done:]
        steps_left = COARSE_WINDOW_LEN - st.window_pos - PREFIX_MARGIN
        n = min(left, max(PREFIX_MIN_CHUNK, -(-left // max(1, steps_left))))
        return st.prefix[st.prefix_done: st.prefix_done + n]

    def _drop_prefix(self, seg: Segment) -> None:
        """Forget the prepared prefix (its slot is kept for the next one)."""
        st = seg.co
        st.prefix, st.prefix_done = None, 0
        if st.prefix_slot is not None:
            self.cache.reset(st.prefix_slot)

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
        """Give back both slots (the window's and the prefix's); an evicted segment rebuilds its window."""
        st = seg.co
        if st is None:
            return
        if st.slot is not None:
            self.cache.release(st.slot)
            st.slot = None
            self.main_held -= 1
        if st.prefix_slot is not None:
            self.cache.release(st.prefix_slot)
            st.prefix_slot = None
            self.prefix_held -= 1
        st.prefix, st.prefix_done = None, 0
