"""Output formats without a server: G.711 against its definition and ffmpeg, streamed resampling and
time-stretching against the whole signal, every container decodable by PyAV, and the protocol's
`encoding` × `sample_rate` checks."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest
import soxr

from protocol import (
    ENCODING_SAMPLE_RATES,
    ENCODINGS,
    SAMPLE_RATES,
    Limits,
    ProtocolError,
    decode_client_message,
    encode_client_message,
    pcm_decode,
    pcm_encode,
)
from protocol.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from protocol.pcm import float_to_s16
from server.formats import CONTAINERS, AudioPipeline, Resampler, TimeStretch
from server.formats.tempo import tempo_factors

ALL_S16 = np.arange(-32768, 32768, dtype=np.int16)
CODES = np.arange(256, dtype=np.uint8)
CHUNKS = (1, 777, 4800, 240, 12000, 3, 2400)  # odd sizes on purpose: every filter state crosses them


def _signal(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Speech-like test audio at 24 kHz: a few tones with a wandering envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(24_000 * seconds)) / 24_000
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (180, 420, 1300, 3100))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.7 * t)
    return (0.15 * envelope * tones + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _chunks(x: np.ndarray) -> list[np.ndarray]:
    out, i, k = [], 0, 0
    while i < x.size:
        n = CHUNKS[k % len(CHUNKS)]
        out.append(x[i : i + n])
        i, k = i + n, k + 1
    return out


def _ffmpeg_codec(name: str, data: np.ndarray, *, encode: bool) -> np.ndarray:
    """ffmpeg's own pcm_mulaw / pcm_alaw (an independent implementation) on int16 samples or codes."""
    if encode:
        cc = av.CodecContext.create(name, "w")
        cc.sample_rate, cc.layout, cc.format = 8000, "mono", "s16"
        frame = av.AudioFrame.from_ndarray(data[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        packets = [*cc.encode(frame), *cc.encode(None)]
        return np.frombuffer(b"".join(bytes(p) for p in packets), np.uint8)
    cc = av.CodecContext.create(name, "r")
    cc.sample_rate, cc.layout = 8000, "mono"
    return np.concatenate([f.to_ndarray().reshape(-1) for f in cc.decode(av.Packet(data.tobytes()))])


# --- G.711 --------------------------------------------------------------------------------


def test_mulaw_decoding_is_the_g711_table() -> None:
    """Every μ-law code decodes to G.711's reconstruction value ((2m + 33) << e) - 33 (14-bit, x4 for
    16-bit) with the sign bit inverted, and to what ffmpeg's decoder gives."""
    u = ~CODES & 0xFF
    e, m = (u >> 4) & 7, u & 0xF
    magnitude = 4 * (((2 * m.astype(np.int32) + 33) << e) - 33)
    want = np.where(u & 0x80, -magnitude, magnitude)
    np.testing.assert_array_equal(mulaw_decode(CODES), want)
    np.testing.assert_array_equal(mulaw_decode(CODES), _ffmpeg_codec("pcm_mulaw", CODES, encode=False))


def test_alaw_decoding_is_the_g711_table() -> None:
    """Every A-law code (even bits inverted) decodes to G.711's reconstruction value: (2m + 1) << 3 in
    segment 0, (2m + 33) << (e + 2) above, and to what ffmpeg's decoder gives."""
    a = (CODES ^ 0x55).astype(np.int32)
    e, m = (a >> 4) & 7, a & 0xF
    magnitude = np.where(e == 0, (2 * m + 1) << 3, (2 * m + 33) << np.maximum(e + 2, 0))
    want = np.where(a & 0x80, magnitude, -magnitude)
    np.testing.assert_array_equal(alaw_decode(CODES), want)
    np.testing.assert_array_equal(alaw_decode(CODES), _ffmpeg_codec("pcm_alaw", CODES, encode=False))


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_g711_encoding_picks_the_interval_of_each_value(law: str) -> None:
    """Over all 65536 int16 values: encoding then decoding lands within half a G.711 step of the input
    (plus the 2- or 3-bit truncation to G.711's 14/13-bit input), every code round-trips, and the codes
    agree with ffmpeg's encoder except at decision boundaries, where they are neighbours."""
    enc, dec, shift = (mulaw_encode, mulaw_decode, 2) if law == "mulaw" else (alaw_encode, alaw_decode, 3)
    codes = enc(ALL_S16)
    back = dec(codes).astype(np.int64)
    table = np.sort(np.unique(dec(CODES).astype(np.int64)))
    gaps = np.diff(table)
    at = np.searchsorted(table, back)  # the reconstruction level each value landed on
    step = np.maximum(gaps[np.clip(at - 1, 0, gaps.size - 1)], gaps[np.clip(at, 0, gaps.size - 1)])
    inside = np.abs(ALL_S16.astype(np.int64)) <= table.max()  # beyond the top level G.711 clips
    assert (np.abs(back - ALL_S16)[inside] <= (step // 2 + (1 << shift))[inside]).all()
    assert (np.abs(back[~inside]) == table.max()).all()
    roundtrip = enc(dec(CODES))
    same = roundtrip == CODES
    if law == "mulaw":  # 0x7F is μ-law's "negative zero": it decodes to 0, which encodes as 0xFF
        assert not same[0x7F] and roundtrip[0x7F] == 0xFF
        same[0x7F] = True
    assert same.all()
    theirs = _ffmpeg_codec(f"pcm_{law}", ALL_S16, encode=True)
    differ = np.nonzero(codes != theirs)[0]
    assert differ.size < 0.02 * ALL_S16.size
    rank = {int(v): i for i, v in enumerate(table)}
    assert all(abs(rank[int(back[i])] - rank[int(dec(theirs[i : i + 1])[0])]) == 1 for i in differ)


@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_g711_wire_encoding_round_trips_float_audio(encoding: str) -> None:
    """pcm_encode/pcm_decode for G.711: one byte per sample, the int16 path of pcm_s16le then G.711."""
    x = _signal(0.5)
    data = pcm_encode(x, encoding)
    assert len(data) == x.size
    law = (mulaw_encode, mulaw_decode) if encoding == "pcm_mulaw" else (alaw_encode, alaw_decode)
    np.testing.assert_array_equal(np.frombuffer(data, np.uint8), law[0](float_to_s16(x)))
    np.testing.assert_array_equal(pcm_decode(data, encoding), law[1](law[0](float_to_s16(x))) / np.float32(32767))


# --- resampling and time-stretching ---------------------------------------------------------


@pytest.mark.parametrize("rate", [r for r in SAMPLE_RATES if r != 24_000])
def test_streamed_resampling_equals_the_whole_signal(rate: int) -> None:
    """Chunks of odd sizes through one Resampler give exactly soxr.resample of the whole signal
    (tolerance 1e-6; measured 0), and as many samples."""
    x = _signal()
    r = Resampler(24_000, rate)
    streamed = np.concatenate([*(r.process(c) for c in _chunks(x)), r.finish()])
    whole = soxr.resample(x, 24_000, rate, quality="HQ")
    assert streamed.shape == whole.shape == (x.size * rate // 24_000,)
    assert np.abs(streamed - whole).max() <= 1e-6


def test_resampler_at_the_model_rate_is_the_identity() -> None:
    x = _signal(0.1)
    r = Resampler(24_000, 24_000)
    assert r.process(x) is not None and np.array_equal(r.process(x), x) and r.finish().size == 0


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_time_stretch_changes_duration_not_pitch(speed: float) -> None:
    """Streamed atempo: duration / speed (within 1 % plus 30 ms, the filter's last window), and the
    strongest tone stays where it was."""
    t = np.arange(48_000) / 24_000
    x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    stretch = TimeStretch(24_000, speed)
    y = np.concatenate([*(stretch.process(c) for c in _chunks(x)), stretch.finish()])
    assert abs(y.size - x.size / speed) <= 0.01 * x.size / speed + 0.03 * 24_000
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    assert abs(np.argmax(spectrum) * 24_000 / y.size - 440) < 5  # resampling would move it to 440 * speed


def test_tempo_factors_stay_in_atempos_best_range() -> None:
    assert tempo_factors(0.25) == [0.5, 0.5] and tempo_factors(4.0) == [2.0, 2.0] and tempo_factors(1.3) == [1.3]
    with pytest.raises(ValueError, match="speed"):
        tempo_factors(4.5)


# --- whole pipelines -------------------------------------------------------------------------


def _run_pipeline(fmt: str, rate: int, x: np.ndarray, speed: float = 1.0) -> tuple[bytes, list[bytes], int]:
    p = AudioPipeline(fmt, rate, speed=speed)
    parts = [p.header(), *(p.feed(c).data for c in _chunks(x)), p.finish().data]
    p.close()
    return b"".join(parts), parts, p.samples_out


def decode_file(data: bytes) -> tuple[np.ndarray, int, str]:
    """Decode a whole file with PyAV: (float32 mono samples, sample rate, codec name)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        audio = np.concatenate(frames)
        if audio.dtype.kind == "i":  # FLAC and PCM decode to integers: full scale is 2 ** (bits - 1)
            audio = audio.astype(np.float32) / np.float32(-np.iinfo(audio.dtype).min)
        return audio.astype(np.float32), stream.codec_context.sample_rate, stream.codec_context.name


# Samples a decoder may add at the start or end: MP3 and AAC encoder delay and padding (no gapless
# header in a stream written front to back); Opus and FLAC are exact.
EXTRA = {"mp3": 2 * 1152, "aac": 2048, "ogg_opus": 0, "flac": 0}


@pytest.mark.parametrize("fmt", list(CONTAINERS))
@pytest.mark.parametrize("rate", [8000, 24_000, 48_000])
def test_containers_stream_a_file_pyav_decodes(fmt: str, rate: int) -> None:
    """Each compressed format, fed in chunks, is one file: PyAV decodes it to the same duration at the
    requested rate (Opus decodes at 48 kHz, its native rate), and bytes leave before the end."""
    x = _signal(1.5)
    data, parts, fed = _run_pipeline(fmt, rate, x)
    assert fed == x.size * rate // 24_000
    assert sum(len(p) for p in parts[:-1]) > 0  # streamed: not everything waited for finish()
    audio, decoded_rate, _ = decode_file(data)
    duration = audio.size / decoded_rate
    assert decoded_rate == (48_000 if fmt == "ogg_opus" else rate)
    assert fed / rate <= duration + 1e-9 and duration <= fed / rate + EXTRA[fmt] / rate + 1e-9
    assert np.sqrt(np.mean(audio**2)) > 0.3 * np.sqrt(np.mean(x**2))  # sound, not silence


def test_flac_is_lossless_at_16_bits() -> None:
    """FLAC holds the 16-bit signal: decoded, it is the input within one 16-bit step."""
    x = _signal(0.5)
    data, _, _ = _run_pipeline("flac", 24_000, x)
    audio, _, name = decode_file(data)
    assert name == "flac" and audio.size == x.size
    assert np.abs(audio - x).max() <= 1 / 32768 + 1e-7


def test_streamed_wav_says_its_length_is_unknown_and_decodes() -> None:
    """The WAV header goes out first with both sizes 0xFFFFFFFF; PyAV and Python's wave read it to the end."""
    x = _signal(0.5)
    data, parts, _ = _run_pipeline("wav", 24_000, x)
    assert len(parts[0]) == 44 and parts[0][4:8] == parts[0][40:44] == b"\xff\xff\xff\xff"
    audio, rate, _ = decode_file(data)
    assert rate == 24_000 and audio.size == x.size
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 24_000 and len(w.readframes(10**9)) == 2 * x.size


def test_speed_pipeline_keeps_the_rate() -> None:
    x = _signal(1.0)
    data, _, fed = _run_pipeline("pcm_s16le", 24_000, x, speed=2.0)
    assert len(data) == 2 * fed and abs(fed - x.size / 2) <= 0.01 * x.size


def test_close_without_finish_is_safe_and_final() -> None:
    """A cancelled request closes its pipeline without finishing; using it afterwards is a bug, said so."""
    p = AudioPipeline("ogg_opus", 48_000)
    p.feed(_signal(0.2))
    p.close()
    p.close()
    with pytest.raises(RuntimeError, match="after close"):
        p.feed(_signal(0.1))


# --- protocol: encoding x sample_rate ----------------------------------------------------


def _decode(msg: dict[str, object]) -> object:
    return decode_client_message(encode_client_message(msg), Limits())


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_takes_its_rates(encoding: str) -> None:
    for rate in ENCODING_SAMPLE_RATES[encoding]:
        msg = _decode({"type": "speak", "id": "r", "text": "x", "encoding": encoding, "sample_rate": rate})
        assert (msg.encoding, msg.sample_rate) == (encoding, rate)  # type: ignore[attr-defined]
    start = _decode({"type": "start", "id": "r", "encoding": encoding})
    assert start.sample_rate == 24_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("rate, message", [
    (44_100, "sample_rate: ogg_opus supports 8000, 16000, 24000, 48000 (Opus runs only at its own rates), not 44100"),
    (22_050, "sample_rate: ogg_opus supports 8000, 16000, 24000, 48000 (Opus runs only at its own rates), not 22050"),
    (11_025, "sample_rate: 11025 is not one of 8000, 16000, 22050, 24000, 44100, 48000"),
    (24_000.0, "sample_rate: expected an integer, got float (send 24000)"),
    ("24000", "sample_rate: expected an integer, got str"),
    (True, "sample_rate: expected an integer, got bool"),
])
def test_bad_sample_rates_are_bad_field_naming_the_valid_values(rate: object, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        _decode({"type": "start", "id": "r1", "encoding": "ogg_opus", "sample_rate": rate})
    assert (info.value.code, info.value.message, info.value.id) == ("bad_field", message, "r1")
