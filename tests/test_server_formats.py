"""Every WebSocket `encoding` × `sample_rate` against a real server: the audio equals the engine's own
output resampled in one go (streamed resampling loses nothing), G.711 equals its definition applied to
that, Opus and MP3 are files PyAV decodes, and invalid combinations are refused naming the field."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from protocol import ENCODING_SAMPLE_RATES, ENCODINGS
from protocol.g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode
from protocol.pcm import float_to_s16
from streaming.engine import Engine
from tests.server_fixtures import (  # noqa: F401 - engine and server are fixtures
    RawClient,
    Result,
    ServerThread,
    engine,
    engine_audio,
    run,
    server,
)
from tests.test_formats import decode_file

TEXT = "Hello there. How are you?"  # two segments
RATES = (8000, 16000, 22050, 24000, 44100, 48000)
S16_STEP = 1 / 32767 + 1e-7
PAIRS = [(enc, rate) for rate in RATES for enc in ENCODINGS if rate in ENCODING_SAMPLE_RATES[enc]]


@pytest.fixture(scope="module")
def reference(engine: Engine) -> np.ndarray:
    """The engine's own 24 kHz audio for TEXT, made before the server sees traffic."""
    return run(engine_audio(engine, TEXT))


@pytest.fixture(scope="module")
def results(server: ServerThread) -> dict[tuple[str, int], Result]:
    """Every valid (encoding, sample_rate) requested over one connection, three at a time."""
    async def go() -> dict[tuple[str, int], Result]:
        client = await RawClient.connect(server.url)
        out: dict[tuple[str, int], Result] = {}
        for i in range(0, len(PAIRS), 3):
            batch = {f"{enc}-{rate}": (enc, rate) for enc, rate in PAIRS[i : i + 3]}
            for req_id, (enc, rate) in batch.items():
                await client.speak(req_id, TEXT, encoding=enc, sample_rate=rate)
            for req_id, result in (await client.until_done(*batch)).items():
                out[batch[req_id]] = result
        await client.close()
        return out
    return run(go(), timeout=300)


def whole(reference: np.ndarray, rate: int) -> np.ndarray:
    """The reference resampled in one go (what the streamed request must equal)."""
    return reference if rate == 24_000 else soxr.resample(reference, 24_000, rate, quality="HQ")


def test_every_pair_was_served(results: dict[tuple[str, int], Result]) -> None:
    assert set(results) == set(PAIRS) and len(PAIRS) == 34
    for (enc, rate), result in results.items():
        assert result.done is not None and result.done["reason"] == "end", (enc, rate, result.errors)
        assert [m["seq"] for m in result.audio] == list(range(len(result.audio)))


@pytest.mark.parametrize("rate", RATES)
def test_pcm_s16_and_f32_equal_the_whole_signal_resampled(results: dict[tuple[str, int], Result],
                                                          reference: np.ndarray, rate: int) -> None:
    """Streamed and resampled chunk by chunk, the request equals the whole signal resampled at once:
    f32 within 1e-6 (measured 0), s16 within one step; offsets contiguous; done.samples the total."""
    want = whole(reference, rate)
    for enc, tolerance in (("pcm_f32le", 1e-6), ("pcm_s16le", S16_STEP)):
        result = results[(enc, rate)]
        result.check_contiguous(enc)
        got = result.samples(enc)
        assert got.shape == want.shape, (enc, rate, got.shape, want.shape)
        target = want if enc == "pcm_f32le" else float_to_s16(want) / np.float32(32767)
        assert np.abs(got - target).max() <= tolerance, (enc, rate)


@pytest.mark.parametrize("rate", RATES)
def test_g711_is_the_definition_applied_to_the_resampled_signal(results: dict[tuple[str, int], Result],
                                                                 reference: np.ndarray, rate: int) -> None:
    """pcm_mulaw / pcm_alaw carry one byte per sample: G.711 of the same int16 signal pcm_s16le carries."""
    s16 = float_to_s16(whole(reference, rate))
    for enc, (encode, decode) in (("pcm_mulaw", (mulaw_encode, mulaw_decode)),
                                  ("pcm_alaw", (alaw_encode, alaw_decode))):
        result = results[(enc, rate)]
        result.check_contiguous(enc)
        codes = np.frombuffer(b"".join(m["pcm"] for m in result.audio), np.uint8)
        want = encode(s16)
        assert codes.size == want.size
        differ = np.nonzero(codes != want)[0]  # only where the float signal sat on an int16 rounding edge
        assert differ.size <= 2, (enc, rate, differ)
        np.testing.assert_allclose(result.samples(enc), decode(codes) / np.float32(32767))


@pytest.mark.parametrize("enc", ["ogg_opus", "mp3"])
def test_compressed_encodings_are_files_pyav_decodes(results: dict[tuple[str, int], Result],
                                                     reference: np.ndarray, enc: str) -> None:
    """The chunks of one request, joined, decode with PyAV to the request's duration; `sample` never
    goes backwards and done.samples counts the samples encoded at the requested rate."""
    extra = {"ogg_opus": 0, "mp3": 2 * 1152}[enc]
    for rate in ENCODING_SAMPLE_RATES[enc]:
        result = results[(enc, rate)]
        offsets = [m["sample"] for m in result.audio]
        assert offsets == sorted(offsets) and len(result.audio) >= 2
        assert result.done is not None and result.done["samples"] == whole(reference, rate).size
        audio, decoded_rate, codec = decode_file(b"".join(m["pcm"] for m in result.audio))
        assert codec in ("opus", "mp3float", "mp3")
        assert decoded_rate == (48_000 if enc == "ogg_opus" else rate)
        seconds = result.done["samples"] / rate
        assert seconds <= audio.size / decoded_rate <= seconds + extra / rate + 1e-9, (enc, rate)


def test_segments_are_in_the_requests_samples(results: dict[tuple[str, int], Result]) -> None:
    """segment bounds count samples at the request's rate: the last one ends at done.samples."""
    for rate in RATES:
        result = results[("pcm_s16le", rate)]
        assert result.segments and result.done is not None
        assert result.segments[-1]["end_sample"] == result.done["samples"]


@pytest.mark.parametrize("fields, message", [
    ({"encoding": "ogg_opus", "sample_rate": 44100},
     "sample_rate: ogg_opus supports 8000, 16000, 24000, 48000 (Opus runs only at its own rates), not 44100"),
    ({"encoding": "pcm_mulaw", "sample_rate": 11025},
     "sample_rate: 11025 is not one of 8000, 16000, 22050, 24000, 44100, 48000"),
    ({"sample_rate": "8000"}, "sample_rate: expected an integer, got str"),
])
def test_invalid_combinations_are_bad_field_and_the_connection_goes_on(server: ServerThread, fields: dict,
                                                                        message: str) -> None:
    async def go() -> tuple[dict, Result]:
        client = await RawClient.connect(server.url)
        await client.speak("bad", TEXT, **fields)
        error = await client.next_error()
        await client.speak("good", TEXT, encoding="pcm_mulaw", sample_rate=8000)
        good = (await client.until_done("good"))["good"]
        await client.close()
        return error, good

    error, good = run(go())
    assert (error["code"], error["id"], error["message"]) == ("bad_field", "bad", message)
    assert good.done is not None and good.done["reason"] == "end" and good.audio
