"""Batch invariance: a stream's numbers do not depend on which other streams share its batch.

Streams of different prompt lengths start at different ticks, run different
numbers of greedy steps, release their KV slots and let later streams reuse
them. Every step's logits must match the same stream run alone (within float
rounding of batched matmuls) and every greedy token must be identical. The KV
cache is allocated once and never grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model_fixtures import tiny_models

# Max |batched - alone| logit. Linear layers may pick different BLAS kernels for
# different batch sizes, and batched attention masks ragged cache lengths; observed with the batched
# engine (2026-11-29): 6.0e-7 (coarse), 4.8e-7 (semantic), logits of magnitude ~1.
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@dataclass(frozen=True)
class Stream:
    """One greedy stream: its prompt, how many decode steps it runs, and the tick it asks to start."""

    prompt: torch.Tensor  # LongTensor [T]
    n_steps: int
    start: int


def run_alone(model, s: Stream, merge: bool) -> torch.Tensor:
    """Logits of the prompt and of every greedy step, stream alone in a 1-slot cache: [n_steps + 1, V]."""
    cache = model.new_cache(1)
    logits = model.prefill(s.prompt[None], cache, [0], merge_context=merge)
    rows = [logits[0]]
    for _ in range(s.n_steps):
        logits = model.decode(logits[0].argmax()[None], cache, [0])
        rows.append(logits[0])
    return torch.stack(rows)


def run_batched(model, streams: list[Stream], n_slots: int, merge: bool, seed: int) -> tuple[list, list[int]]:
    """Run every stream in a shared n_slots cache, decoding all active streams together each tick.

    Returns (per-stream logits [n_steps + 1, V], the slot each stream got, in start order).
    """
    rng = np.random.default_rng(seed)
    cache = model.new_cache(n_slots)
    ptr, shape = (cache.k.data_ptr(), cache.v.data_ptr()), (cache.k.shape, cache.v.shape)
    rows: dict[int, list[torch.Tensor]] = {}
    slot_of: dict[int, int] = {}
    slots_given: list[int] = []
    pending, active, tick = list(range(len(streams))), set(), 0
    while pending or active:
        starting = [i for i in pending if streams[i].start <= tick][: cache.n_free]
        by_len: dict[int, list[int]] = {}
        for i in starting:
            pending.remove(i)
            by_len.setdefault(len(streams[i].prompt), []).append(i)
        for group in by_len.values():  # equal-length prompts share one prefill call
            slots = [cache.allocate() for _ in group]
            slots_given += slots
            logits = model.prefill(torch.stack([streams[i].prompt for i in group]), cache, slots, merge_context=merge)
            for j, i in enumerate(group):
                slot_of[i], rows[i] = slots[j], [logits[j]]
                active.add(i)
        ready = [i for i in active if len(rows[i]) <= streams[i].n_steps]
        rng.shuffle(ready)  # batch order must not matter either
        if ready:
            tokens = torch.stack([rows[i][-1].argmax() for i in ready])
            logits = model.decode(tokens, cache, [slot_of[i] for i in ready])
            for j, i in enumerate(ready):
                rows[i].append(logits[j])
        for i in [i for i in active if len(rows[i]) == streams[i].n_steps + 1]:
            cache.release(slot_of[i])
            active.remove(i)
        assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptr and (cache.k.shape, cache.v.shape) == shape
        tick += 1
    assert cache.n_free == n_slots
    return [torch.stack(rows[i]) for i in range(len(streams))], slots_given


def assert_invariant(model, streams: list[Stream], n_slots: int, merge: bool) -> None:
    batched, slots_given = run_batched(model, streams, n_slots, merge, seed=0)
    assert len(slots_given) > len(set(slots_given)), "no slot was reused: the schedule lost its coverage"
    for k, (s, got) in enumerate(zip(streams, batched)):
        ref = run_alone(model, s, merge)
        assert got.shape == ref.shape == (s.n_steps + 1, ref.shape[1])
        assert torch.equal(got.argmax(-1), ref.argmax(-1)), f"stream {k}: greedy tokens differ"
        torch.testing.assert_close(got, ref, rtol=0, atol=LOGIT_ATOL, msg=f"stream {k}")


def test_coarse_gpt_batch_invariant(models) -> None:
    """5 coarse streams (prompts 5..60, 6..25 steps, staggered, 3 reused slots): tokens identical, logits 1e-4."""
    g = torch.Generator().manual_seed(0)

    def prompt(n: int) -> torch.Tensor:
        return torch.randint(0, 12_096, (n,), generator=g)

    streams = [
        Stream(prompt(5), n_steps=25, start=0),
        Stream(prompt(17), n_steps=6, start=0),
        Stream(prompt(40), n_steps=12, start=2),
        Stream(prompt(40), n_steps=9, start=2),  # same length: prefilled together with the one above
        Stream(prompt(60), n_steps=15, start=3),  # waits for a free slot, then reuses it
    ]
    assert_invariant(models.coarse, streams, n_slots=3, merge=False)


def test_semantic_gpt_batch_invariant(models) -> None:
    """4 semantic streams (merged 513-token prompts, 4..14 steps, staggered, 2 slots): tokens identical, logits 1e-4."""
    g = torch.Generator().manual_seed(1)

    def prompt() -> torch.Tensor:
        text = torch.randint(10_048, 10_448, (256,), generator=g)
        hist = torch.randint(0, 10_001, (256,), generator=g)
        return torch.cat([text, hist, torch.tensor([129_599])])

    streams = [Stream(prompt(), 14, 0), Stream(prompt(), 4, 0), Stream(prompt(), 8, 1), Stream(prompt(), 6, 1)]
    assert_invariant(models.text, streams, n_slots=2, merge=True)


@torch.inference_mode()
def test_fine_gpt_batch_invariant(models) -> None:
    """FineGPT on a batch of 3 windows equals each window alone for every codebook (atol 1e-4, argmax identical)."""
    idx = torch.randint(0, 1025, (3, 300, 8), generator=torch.Generator().manual_seed(2))
    for cb in range(1, 8):
        batch = models.fine(cb, idx)
        for b in range(3):
            alone = models.fine(cb, idx[b : b + 1])[0]
            torch.testing.assert_close(batch[b], alone, rtol=0, atol=LOGIT_ATOL)
            assert torch.equal(batch[b].argmax(-1), alone.argmax(-1))


def test_decode_writes_only_its_slot(models) -> None:
    """Decoding slot 1 leaves slot 0's keys/values bit-identical (torch.equal) and advances only slot 1's length."""
    model = models.coarse
    cache = model.new_cache(2)
    a, b = cache.allocate(), cache.allocate()
    model.prefill(torch.arange(10)[None], cache, [a])
    model.prefill(torch.arange(20, 27)[None], cache, [b])
    k0, v0 = cache.k[:, a].clone(), cache.v[:, a].clone()
    for t in range(5):
        model.decode(torch.tensor([100 + t]), cache, [b])
    assert torch.equal(cache.k[:, a], k0) and torch.equal(cache.v[:, a], v0)
    assert cache.lengths[a] == 10 and cache.lengths[b] == 12


def test_slot_allocate_release_full(models) -> None:
    """Slots come out 0, 1, 2; a full cache raises RuntimeError; released slots are reused with length 0."""
    cache = models.coarse.new_cache(3, max_len=64)
    assert cache.k.shape == (2, 3, 2, 64, 32) and cache.n_free == 3
    assert [cache.allocate() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="KV cache full: all 3 slots are in use"):
        cache.allocate()
    models.coarse.prefill(torch.arange(9)[None], cache, [1])
    assert cache.lengths[1] == 9
    cache.release(1)
    assert cache.n_free == 1 and cache.lengths[1] == 0
    with pytest.raises(AssertionError, match="bad release of slot 1"):
        cache.release(1)
    assert cache.allocate() == 1 and cache.lengths[1] == 0
    cache.lengths[2] = 5
    cache.reset(2)
    assert cache.lengths[2] == 0 and cache.n_free == 0


def test_decode_past_cache_end_refused(models) -> None:
    """A stream whose slot is full (length == max_len) cannot decode: AssertionError, nothing written."""
    cache = models.coarse.new_cache(1, max_len=8)
    models.coarse.prefill(torch.arange(8)[None], cache, [0])
    before = cache.k.clone()
    with pytest.raises(AssertionError, match="ran past the end of its KV cache slot"):
        models.coarse.decode(torch.tensor([1]), cache, [0])
    assert torch.equal(cache.k, before) and cache.lengths[0] == 8
