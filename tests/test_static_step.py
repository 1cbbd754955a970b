"""Static-shape decode steps (what CUDA graphs replay), run eagerly on CPU: same tokens as the dynamic path.

Must be equal: greedy tokens, identical; logits within 1e-4 (the static step reads
a bucketed cache length with more masked positions, which changes float rounding
only). Padding rows write only the scratch slot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_fixtures import make_engine, run, tiny_parts, voice
from model_fixtures import tiny_models
from streaming.errors import ConfigError
from streaming.models.static_step import BATCH_BUCKETS, StaticDecoder, batch_bucket, length_bucket
from streaming.params import SamplingParams
from streaming.prompts import COARSE_HEAD_ROWS
from streaming.stream import SpeechRequest

LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def test_buckets() -> None:
    """Batches round up to the next bucket; lengths to a multiple of 256, capped at the cache length."""
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 9, 17, 33, 65, 128)] == [1, 2, 4, 8, 16, 32, 64, 128, 128]
    with pytest.raises(ConfigError, match="largest static bucket"):
        batch_bucket(129)
    assert [length_bucket(n, 1024) for n in (1, 256, 257, 900, 1024)] == [256, 256, 512, 1024, 1024]
    assert BATCH_BUCKETS[-1] == 128


def prefill(model, cache, prompts, rows):
    slots = [cache.allocate() for _ in prompts]
    logits = [model.prefill(p[None], cache, [s], rows=rows)[0] for p, s in zip(prompts, slots)]
    return slots, torch.stack(logits)


@pytest.mark.parametrize("name", ["coarse", "text"])
def test_static_steps_equal_dynamic_steps(models, name) -> None:
    """5 streams (ragged lengths 3..250, scattered slots, a subset stepping each tick, crossing the 256-position
    bucket): 20 greedy steps through StaticDecoder equal model.decode, tokens identical, logits 1e-4; the
    scratch slot absorbs the padding rows and no other slot is written past a stream's own length."""
    model = getattr(models, name)
    rows = COARSE_HEAD_ROWS if name == "coarse" else None
    vocab = 12_096 if name == "coarse" else 10_048
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, vocab, (n,), generator=g) for n in (3, 40, 250, 17, 243)]

    dyn_cache, st_cache = model.new_cache(8), model.new_cache(9)
    scratch = st_cache.allocate()
    st_cache.allocate()  # one more used slot so the streams' slots differ from the dynamic cache's
    static = StaticDecoder(model, st_cache, scratch, rows)
    dyn_slots, dyn_logits = prefill(model, dyn_cache, prompts, rows)
    st_slots, st_logits = prefill(model, st_cache, prompts, rows)
    torch.testing.assert_close(st_logits, dyn_logits, rtol=0, atol=0)
    last_dyn, last_st = dyn_logits.argmax(-1), st_logits.argmax(-1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        active = sorted(rng.choice(5, size=int(rng.integers(1, 6)), replace=False).tolist())
        d = model.decode(last_dyn[active], dyn_cache, [dyn_slots[i] for i in active], rows=rows)
        s = static(last_st[active].tolist(), [st_slots[i] for i in active])
        assert torch.equal(d.argmax(-1), s.argmax(-1))
        torch.testing.assert_close(s, d, rtol=0, atol=LOGIT_ATOL)
        last_dyn[active], last_st[active] = d.argmax(-1), s.argmax(-1)
    assert max(dyn_cache.lengths) > 256  # a stream crossed the first length bucket
    for i, (ds, ss) in enumerate(zip(dyn_slots, st_slots)):
        n = dyn_cache.lengths[ds]
        assert st_cache.lengths[ss] == n
        torch.testing.assert_close(st_cache.k[:, ss, :, :n], dyn_cache.k[:, ds, :, :n], rtol=0, atol=1e-5)
        assert not st_cache.k[:, ss, :, n:].any(), f"stream {i}: something wrote past its length"


def test_cuda_graphs_refused_without_cuda(models) -> None:
    """Asking for CUDA graphs on a CPU model is a ConfigError that names the flag to drop."""
    cache = models.coarse.new_cache(2)
    with pytest.raises(ConfigError, match="cuda-graphs"):
        StaticDecoder(models.coarse, cache, cache.allocate(), graphs=True)
    assert StaticDecoder(models.coarse, cache, cache.allocate()).capture() == 0  # graphs off: nothing to capture


def test_engine_with_static_shapes_equals_default_engine() -> None:
    """The whole engine with static-shape steps: three concurrent requests give the default engine's tokens."""
    parts = tiny_parts()
    reqs = [SpeechRequest(text=t, voice=v, return_tokens=True, sampling=SamplingParams(greedy=True, max_semantic_tokens=n))
            for t, v, n in [("Hello there.", None, 30), ("A second voice speaks.", voice(), 50), ("Third.", None, 20)]]
    dynamic = make_engine(parts, max_streams=4)
    try:
        want = [run(dynamic, r)[3] for r in reqs]
    finally:
        dynamic.stop()
    static = make_engine(parts, max_streams=4, static_shapes=True)
    try:
        handles = [static.submit(r) for r in reqs]
        got = [list(h.events(timeout=120))[-1] for h in handles]
    finally:
        static.stop()
    for w, d in zip(want, got):
        assert d.reason == "end"
        for a, b in zip(w.tokens, d.tokens):
            assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.coarse, b.coarse)
            assert np.array_equal(a.fine, b.fine)


def test_engine_refuses_cuda_graphs_on_cpu() -> None:
    """EngineConfig(cuda_graphs=True) on a CPU model fails at construction, naming the flag."""
    from streaming.engine import Engine, EngineConfig

    models, codec, tok = tiny_parts()
    with pytest.raises(ConfigError, match="--cuda-graphs"):
        Engine(models, codec, tok, EngineConfig(cuda_graphs=True))


def test_codec_precision_choices() -> None:
    """fp16 decoding stays >= 60 dB SNR against fp32 (seeded random codec: 64 dB measured); a bad dtype is refused."""
    from streaming.codec import decode_codes, load_codec

    codes = np.random.default_rng(0).integers(0, 1024, (8, 60))
    ref = decode_codes(load_codec("random"), codes).astype(np.float64)
    half = decode_codes(load_codec("random", dtype="fp16"), codes)
    snr = 10 * np.log10(np.sum(ref ** 2) / np.sum((half - ref) ** 2))
    assert snr >= 60, snr
    with pytest.raises(ConfigError, match="codec_dtype: 'int8' is not one of"):
        load_codec("random", dtype="int8")
