"""The batched paths: one call for the whole batch, each row equal to the same row run alone.

What must be equal, and how closely:
- greedy tokens: identical, always;
- logits: within float rounding of batched kernels (LOGIT_ATOL, measured <= 1e-6);
- PCM decoded in a batch: within audio_checks.BATCH_F32_ATOL of the solo decode;
- sampled tokens with a seed: identical alone or in any batch (per-row counter-based random numbers).
Structural checks count torch ops with a TorchDispatchMode: a batched call costs the
same number of ops at B=1 and B=16, so no per-stream loop hides in a per-step path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from audio_checks import BATCH_F32_ATOL
from engine_fixtures import make_engine, run, tiny_parts, voice
from model_fixtures import tiny_models
from streaming.bark import fine_predict
from streaming.codec import StatefulDecoder, load_codec
from streaming.codec_stateful import decode_together
from streaming.errors import ConfigError
from streaming.events import AudioChunk
from streaming.params import SamplingParams
from streaming.sampling import RowSampling, StreamRng, sample_rows, uniforms
from streaming.stream import SpeechRequest

LOGIT_ATOL = 1e-4


class OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def ops(fn) -> int:
    with OpCount() as c:
        fn()
    return c.n


@pytest.fixture(scope="module")
def models():
    return tiny_models()


# ------------------------------------------------------------------ causal GPT
def test_ragged_prefill_one_call_equals_each_alone(models) -> None:
    """Coarse prompts of 5, 300 and 887 positions prefilled in one padded call: each row's logits and its
    next 10 greedy steps equal the prompt run alone (tokens identical, logits 1e-4)."""
    model = models.coarse
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 12_096, (n,), generator=g) for n in (300, 5, 887)]
    lengths = [len(p) for p in prompts]
    idx = torch.zeros(3, max(lengths), dtype=torch.long)
    for row, p in zip(idx, prompts):
        row[: len(p)] = p
    cache = model.new_cache(3)
    slots = [cache.allocate() for _ in prompts]
    batched = [model.prefill(idx, cache, slots, lengths=lengths)]
    for _ in range(10):
        batched.append(model.decode(batched[-1].argmax(-1), cache, slots))  # ragged cache lengths
    for b, p in enumerate(prompts):
        alone_cache = model.new_cache(1)
        alone = [model.prefill(p[None], alone_cache, [0])]
        for _ in range(10):
            alone.append(model.decode(alone[-1].argmax(-1), alone_cache, [0]))
        got, want = torch.stack([x[b] for x in batched]), torch.cat(alone)
        assert torch.equal(got.argmax(-1), want.argmax(-1)), f"row {b}: greedy tokens differ"
        torch.testing.assert_close(got, want, rtol=0, atol=LOGIT_ATOL)


def test_decode_step_ops_do_not_grow_with_batch(models) -> None:
    """One decode step at B=16 (ragged lengths, scattered slots) runs exactly as many torch ops as at B=1."""
    model = models.coarse

    def step(batch: int, scattered: bool) -> int:
        cache = model.new_cache(32)
        slots = [cache.allocate() for _ in range(32)][::2 if scattered else 1][:batch]
        for i, s in enumerate(slots):
            cache.lengths[s] = 10 + 3 * i
        return ops(lambda: model.decode(torch.zeros(batch, dtype=torch.long), cache, slots))

    one = step(1, False)
    assert step(16, False) <= one + 8  # the ragged mask: a few ops, built once for all layers
    assert step(16, True) <= one + 8
    assert step(16, True) == step(4, True)


# ------------------------------------------------------------------ fine
def test_fine_windows_of_any_geometry_in_one_call(models) -> None:
    """Three windows (lengths 40, 256, 100; different left contexts) filled in one padded call equal each
    filled alone, token for token; positions before each row's left context are untouched."""
    g = torch.Generator().manual_seed(5)
    geoms = [(24, 40), (200, 256), (0, 100)]  # (left, length)
    wins = [torch.randint(0, 1024, (T, 8), generator=g) for _, T in geoms]
    for w, (left, _) in zip(wins, geoms):
        w[left:, 2:] = 1024  # codebooks 2..7 unknown past the left context
    T = max(T for _, T in geoms)
    x = torch.full((3, T, 8), 1024, dtype=torch.long)
    for row, w in zip(x, wins):
        row[: len(w)] = w
    before = x.clone()
    fine_predict(models.fine, x, [lf for lf, _ in geoms], 2, [None] * 3, [None] * 3, lengths=[t for _, t in geoms])
    for b, (w, (left, length)) in enumerate(zip(wins, geoms)):
        alone = w[None].clone()
        fine_predict(models.fine, alone, left, 2, [None], [None])
        assert torch.equal(x[b, :length], alone[0]), f"window {b} differs"
        assert torch.equal(x[b, :left], before[b, :left]) and torch.equal(x[b, length:], before[b, length:])


def test_fine_sampling_in_a_batch_equals_alone(models) -> None:
    """A sampled window (temp 0.5, seeded) gives the same codes alone or beside other windows."""
    g = torch.Generator().manual_seed(6)
    w = torch.randint(0, 1024, (64, 8), generator=g)
    other = torch.randint(0, 1024, (90, 8), generator=g)
    alone = w[None].clone()
    fine_predict(models.fine, alone, 16, 2, [0.5], [StreamRng(9)])
    x = torch.full((2, 90, 8), 1024, dtype=torch.long)
    x[0], x[1, :64] = other, w
    fine_predict(models.fine, x, [30, 16], 2, [1.0, 0.5], [StreamRng(1), StreamRng(9)], lengths=[90, 64])
    assert torch.equal(x[1, :64], alone[0])


# ------------------------------------------------------------------ sampling
def test_stream_rng_is_independent_of_batching() -> None:
    """uniforms() over several streams equals each stream drawing alone; counters advance per stream."""
    a, b = StreamRng(1), StreamRng(2)
    together = uniforms([a, b], [3, 2])
    a2, b2 = StreamRng(1), StreamRng(2)
    assert np.array_equal(together, np.concatenate([a2.uniform(3), b2.uniform(2)]))
    assert np.array_equal(a.uniform(4), a2.uniform(4)) and a.counter == 7
    assert not np.array_equal(StreamRng(1).uniform(4), StreamRng(3).uniform(4))
    assert ((together >= 0) & (together < 1)).all()


def test_sample_rows_per_row_settings_and_batch_invariance() -> None:
    """Rows with their own temperature, top-k, top-p and seed: each row's draws over 50 steps equal
    that row sampled alone; greedy rows take the argmax; filtered tokens are never drawn."""
    g = torch.Generator().manual_seed(0)
    rows = [RowSampling(None), RowSampling(0.7), RowSampling(1.0, top_k=5), RowSampling(1.3, top_p=0.5),
            RowSampling(0.9, top_k=50, top_p=0.9)]
    batch_rngs = [StreamRng(10 + i) for i in range(5)]
    alone_rngs = [StreamRng(10 + i) for i in range(5)]
    for _ in range(50):
        logits = torch.randn(5, 300, generator=g) * 3
        tokens, last_p = sample_rows(logits, rows, batch_rngs)
        for i, r in enumerate(rows):
            t1, p1 = sample_rows(logits[i:i + 1], [r], [alone_rngs[i]])
            assert tokens[i] == t1[0] and last_p[i] == pytest.approx(p1[0], abs=1e-7)
        assert tokens[0] == int(logits[0].argmax())
        assert tokens[2] in set(torch.topk(logits[2], 5).indices.tolist())
        sorted_p = torch.softmax(logits[3], -1).sort(descending=True)
        nucleus = sorted_p.indices[: int((sorted_p.values.cumsum(0) < 0.5).sum()) + 1]
        assert tokens[3] in set(nucleus.tolist())


def test_inverse_cdf_draws_follow_the_distribution() -> None:
    """20,000 seeded draws from a 4-token distribution land within 2 % of each probability."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log()[None].repeat(20_000, 1)
    tokens, _ = sample_rows(logits, [RowSampling(1.0)] * 20_000, [StreamRng(i) for i in range(20_000)])
    freq = np.bincount(tokens, minlength=4) / 20_000
    assert np.abs(freq - probs.numpy()).max() < 0.02


def test_sampling_ops_do_not_grow_with_batch() -> None:
    """Sampling 64 rows with mixed settings costs the same torch ops as sampling 2."""
    def count(n: int) -> int:
        rows = [RowSampling(0.7, top_k=10 if i % 2 else None, top_p=0.9 if i % 3 else None) for i in range(n)]
        logits = torch.randn(n, 1024)
        return ops(lambda: sample_rows(logits, rows, [StreamRng(i) for i in range(n)]))

    assert count(64) == count(2)


# ------------------------------------------------------------------ codec
@pytest.fixture(scope="module")
def codec():
    return load_codec("random", seed=0)


def test_decode_together_equals_solo_decodes(codec) -> None:
    """Three streams with different pasts decode their next 16-frame chunks in one call; each equals
    its solo decode within BATCH_F32_ATOL, and the carried states let each continue alone unchanged."""
    rng = np.random.default_rng(2)
    codes = [rng.integers(0, 1024, (8, 80)) for _ in range(3)]
    firsts = [8, 24, 40]  # different histories
    solo = []
    for c, f in zip(codes, firsts):
        d = StatefulDecoder(codec)
        solo.append(np.concatenate([d.decode(c[:, :f]), d.decode(c[:, f:f + 16]), d.decode(c[:, f + 16:f + 20])]))
    decs = [StatefulDecoder(codec) for _ in codes]
    heads = [d.decode(c[:, :f]) for d, c, f in zip(decs, codes, firsts)]
    mid = decode_together(decs, np.stack([c[:, f:f + 16] for c, f in zip(codes, firsts)]))
    tails = [d.decode(c[:, f + 16:f + 20]) for d, c, f in zip(decs, codes, firsts)]  # alone again
    for b in range(3):
        y = np.concatenate([heads[b], mid[b], tails[b]])
        np.testing.assert_allclose(y, solo[b], rtol=0, atol=BATCH_F32_ATOL)


def test_decode_together_first_chunks_and_phase_check(codec) -> None:
    """First chunks of several streams decode together; mixing a first chunk with a later one is refused."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 1024, (2, 8, 8))
    decs = [StatefulDecoder(codec), StatefulDecoder(codec)]
    y = decode_together(decs, codes)
    for b in range(2):
        np.testing.assert_allclose(y[b], StatefulDecoder(codec).decode(codes[b]), rtol=0, atol=BATCH_F32_ATOL)
    with pytest.raises(ConfigError, match="same phase"):
        decode_together([decs[0], StatefulDecoder(codec)], codes)


def test_decode_together_ops_do_not_grow_with_batch(codec) -> None:
    """Decoding 12 streams' chunks costs the same torch ops as decoding 2 (states stacked, not looped)."""
    def count(n: int) -> int:
        decs = [StatefulDecoder(codec) for _ in range(n)]
        rng = np.random.default_rng(0)
        decode_together(decs, rng.integers(0, 1024, (n, 8, 8)))
        return ops(lambda: decode_together(decs, rng.integers(0, 1024, (n, 8, 4))))

    assert count(12) == count(2)


# ------------------------------------------------------------------ engine
def test_sampled_streams_equal_solo_runs() -> None:
    """Seeded, non-greedy requests (different temperatures, top-k, top-p) give the same tokens alone and
    together, at different lengths and stages; audio within float rounding."""
    engine = make_engine(tiny_parts(), max_streams=4)
    try:
        reqs = [SpeechRequest(text=t, sampling=p, return_tokens=True, voice=v) for t, p, v in [
            ("Hello there.", SamplingParams(seed=1, max_semantic_tokens=30), None),
            ("A second, longer request.", SamplingParams(seed=2, max_semantic_tokens=50, top_k=20, text_temp=1.0), voice()),
            ("Third.", SamplingParams(seed=3, max_semantic_tokens=20, top_p=0.8, fine_temp=None), None),
        ]]
        solo = [run(engine, r) for r in reqs]
        handles = [engine.submit(r) for r in reqs]
        for (audio, _, _, done), h in zip(solo, handles):
            events = list(h.events(timeout=120))
            done2 = events[-1]
            assert done2.reason == "end"
            for a, b in zip(done.tokens, done2.tokens):
                assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.coarse, b.coarse)
                assert np.array_equal(a.fine, b.fine)
            audio2 = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
            np.testing.assert_allclose(audio2, audio, rtol=0, atol=BATCH_F32_ATOL)
    finally:
        engine.stop()
