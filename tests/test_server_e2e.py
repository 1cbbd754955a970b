"""End to end: real server on port 0, the async client, audio equal to the engine's own output."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from client.api import AudioChunk, BarkStreamClient, Done, Segment
from server.app import BarkServer
from server.config import ServerConfig
from streaming.engine import Engine
from tests.server_fixtures import (  # noqa: F401 - engine and server are fixtures
    PARAMS,
    RawClient,
    ServerThread,
    engine,
    engine_audio,
    metric_value,
    quantise_s16,
    run,
    server,
    start_server,
    make_engine,
)

TEXTS = ("Hello there.", "How are you today?", "The quick brown fox jumps.", "One more, please.")
LONG_TEXT = " ".join(f"Sentence number {n} is here." for n in range(40))
LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # about a minute of CPU unless cancelled
S16_TOLERANCE = 1.0 / 32767.0 + 1e-7
PIECES_BEFORE_WAIT = ("Hello there.\n",)  # sent, then flushed; the rest follows the first audio
PIECES_AFTER_WAIT = (" How are", " you?")


@pytest.fixture(scope="module")
def reference(engine: Engine) -> dict[str, np.ndarray]:
    """Audio the engine makes for each test text on its own, before the server sees any traffic."""
    async def make() -> dict[str, np.ndarray]:
        return {text: await engine_audio(engine, text) for text in TEXTS}
    return run(make())


def assert_s16_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.abs(got - quantise_s16(want)).max(initial=0.0) <= S16_TOLERANCE


async def speak(client: BarkStreamClient, text: str, **kw: object) -> tuple[np.ndarray, Done, list[object]]:
    """One request through the client: (audio, done, every event)."""
    events = [event async for event in client.speak(text, params=PARAMS, **kw)]  # type: ignore[arg-type]
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    assert isinstance(events[-1], Done), events[-1]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32), events[-1], events


def test_speak_whole_text_s16(server: ServerThread, reference: dict[str, np.ndarray]) -> None:
    """A speak request streams contiguous s16 audio equal to the engine's own, with segments and a done."""
    async def go() -> None:
        async with await BarkStreamClient.connect(server.url) as client:
            audio, done, events = await speak(client, TEXTS[0])
        assert done.reason == "end" and done.samples == audio.size > 0
        assert {"ttfa_ms", "rtf"} <= done.stats.keys()
        assert isinstance(events[-1], Done)
        chunks = [e for e in events if isinstance(e, AudioChunk)]
        assert [c.seq for c in chunks] == list(range(len(chunks)))
        assert sum(c.samples.size for c in chunks) == done.samples
        segments = [e for e in events if isinstance(e, Segment)]
        assert segments and segments[-1].end_sample == done.samples
        assert_s16_equal(audio, reference[TEXTS[0]])
    run(go())


def test_speak_f32_is_exact(server: ServerThread, reference: dict[str, np.ndarray]) -> None:
    """pcm_f32le carries the engine's float samples bit for bit."""
    async def go() -> None:
        async with await BarkStreamClient.connect(server.url) as client:
            audio, done, _ = await speak(client, TEXTS[1], encoding="pcm_f32le")
        assert done.reason == "end"
        np.testing.assert_array_equal(audio, reference[TEXTS[1]])
    run(go())


def test_piecewise_start_text_flush_end(server: ServerThread) -> None:
    """start/text/flush/end streams the same audio as the engine fed the same pieces directly."""
    first_audio = asyncio.Event()

    async def pieces():  # type: ignore[no-untyped-def]
        for piece in PIECES_BEFORE_WAIT:
            yield piece
        await first_audio.wait()
        for piece in PIECES_AFTER_WAIT:
            yield piece

    async def go() -> tuple[np.ndarray, np.ndarray, Done]:
        steps = [("text", p) for p in PIECES_BEFORE_WAIT] + [("flush", ""), ("wait", "")]
        steps += [("text", p) for p in PIECES_AFTER_WAIT] + [("end", "")]
        want = await engine_audio(server.engine, None, tuple(steps))
        chunks: list[np.ndarray] = []
        done = None
        async with await BarkStreamClient.connect(server.url) as client:
            async for event in client.stream_text(pieces(), params=PARAMS, encoding="pcm_f32le"):
                if isinstance(event, AudioChunk):
                    chunks.append(event.samples)
                    first_audio.set()
                elif isinstance(event, Done):
                    done = event
        assert done is not None
        return np.concatenate(chunks), want, done

    got, want, done = run(go())
    assert done.reason == "end" and done.samples == got.size
    np.testing.assert_array_equal(got, want)


def test_several_ids_on_one_connection(server: ServerThread, reference: dict[str, np.ndarray]) -> None:
    """Three requests interleaved on one connection each get their own intact audio and done."""
    async def go() -> list[tuple[np.ndarray, Done, list[object]]]:
        async with await BarkStreamClient.connect(server.url) as client:
            return await asyncio.gather(*(speak(client, text) for text in TEXTS[:3]))

    for text, (audio, done, _) in zip(TEXTS, run(go())):
        assert done.reason == "end" and done.samples == audio.size
        assert_s16_equal(audio, reference[text])


def test_eight_connections_at_once(server: ServerThread, reference: dict[str, np.ndarray]) -> None:
    """Eight connections speaking at once all finish with audio equal to the engine's own."""
    async def one(text: str) -> tuple[np.ndarray, Done, list[object]]:
        async with await BarkStreamClient.connect(server.url) as client:
            return await speak(client, text)

    async def go() -> list[tuple[np.ndarray, Done, list[object]]]:
        return await asyncio.gather(*(one(TEXTS[i % len(TEXTS)]) for i in range(8)))

    for i, (audio, done, _) in enumerate(run(go())):
        assert done.reason == "end" and done.samples == audio.size
        assert_s16_equal(audio, reference[TEXTS[i % len(TEXTS)]])


def test_healthz_and_404(server: ServerThread) -> None:
    """/healthz answers JSON with the model and stream count; unknown paths are 404."""
    status, content_type, body = server.http("/healthz")
    assert (status, content_type) == (200, "application/json")
    health = json.loads(body)
    assert health["status"] == "ok" and health["model"] == "random-tiny"
    assert isinstance(health["active_streams"], int) and health["active_streams"] >= 0
    status, _, body = server.http("/nope")
    assert status == 404 and "/v1/stream" in body


def test_healthz_unhealthy_engine() -> None:
    """/healthz is 503 unhealthy once the engine thread has died."""
    dead = make_engine(max_streams=1)
    dead.stop()  # its thread is gone: the server finds a dead engine
    srv = ServerThread(dead, ServerConfig(port=0, model="random-tiny", offline=True)).start()
    try:
        status, _, body = srv.http("/healthz")
        assert status == 503 and json.loads(body)["status"] == "unavailable"
        assert json.loads(body)["reason"] == "engine_failed"
        assert metric_value(srv.http("/metrics")[2], "bark_up") == 0
    finally:
        srv.stop()


def test_metrics_count_requests(server: ServerThread) -> None:
    """/metrics reports connections, requests, ttfa and rtf histograms in Prometheus text."""
    before = server.http("/metrics")[2]

    async def go() -> None:
        async with await BarkStreamClient.connect(server.url) as client:
            server.wait_metric("bark_connections", lambda v: v >= 1)
            _, done, _ = await speak(client, TEXTS[0])
            assert done.reason == "end"

    run(go())
    status, content_type, after = server.http("/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    for name in ("bark_active_streams", "bark_queue_depth", "bark_connections"):
        assert f"# TYPE {name} gauge" in after
    for name in ("bark_requests_total", "bark_ttfa_seconds_count", "bark_rtf_count"):
        assert metric_value(after, name) == metric_value(before, name) + 1, name
    inf_bucket = metric_value(after, "bark_ttfa_seconds_bucket", 'le="+Inf"')
    assert inf_bucket == metric_value(after, "bark_ttfa_seconds_count")


def test_cancel_frees_the_engine(server: ServerThread) -> None:
    """cancel ends a long request with done(cancelled) and the engine's active streams drop to zero."""
    async def go() -> tuple[Done, int]:
        async with await BarkStreamClient.connect(server.url) as client:
            received = 0
            async for event in client.speak(LONG_TEXT, id="long", params=LONG_PARAMS):
                if isinstance(event, AudioChunk):
                    received += event.samples.size
                    if event.seq == 0:
                        await client.cancel("long")
                elif isinstance(event, Done):
                    return event, received
        raise AssertionError("no done")

    done, received = run(go())
    assert done.reason == "cancelled" and done.samples == received
    server.wait_metric("bark_active_streams", lambda v: v == 0)


@pytest.mark.parametrize("abrupt", [False, True], ids=["close", "abort"])
def test_disconnect_cancels_streams(server: ServerThread, abrupt: bool) -> None:
    """Closing (or dropping) a connection mid-stream cancels its engine streams at once."""
    async def go() -> None:
        client = await RawClient.connect(server.url)
        await client.speak("a", LONG_TEXT, params=LONG_PARAMS)
        await client.speak("b", LONG_TEXT, params=LONG_PARAMS)
        while not client.results.get("a", None) or not client.results["a"].audio:
            await client.next_message()
        assert server.metric("bark_active_streams") >= 1
        if abrupt:
            client.ws.transport.abort()
        else:
            await client.close()

    run(go())
    server.wait_metric("bark_active_streams", lambda v: v == 0, timeout=5.0)
    server.wait_metric("bark_connections", lambda v: v == 0, timeout=5.0)


def test_ready_announces_limits(server: ServerThread) -> None:
    """ready carries protocol 1, 24 kHz mono, every encoding and sample rate (Opus's own set), the model and
    the configured limits."""
    async def go() -> dict[str, object]:
        client = await RawClient.connect(server.url)
        await client.close()
        return client.ready

    ready = run(go())
    assert (ready["protocol"], ready["sample_rate"], ready["channels"], ready["model"]) == (1, 24000, 1, "random-tiny")
    assert ready["encodings"] == ["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw", "ogg_opus", "mp3"]
    assert ready["sample_rates"] == [8000, 16000, 22050, 24000, 44100, 48000]
    assert ready["encoding_sample_rates"]["ogg_opus"] == [8000, 16000, 24000, 48000]  # type: ignore[index]
    assert ready["encoding_sample_rates"]["mp3"] == ready["sample_rates"]  # type: ignore[index]
    assert ready["limits"]["max_ids_in_flight"] == server.config.limits.max_ids_in_flight  # type: ignore[index]
    assert "v2/en_speaker_6" in ready["voices"]  # type: ignore[operator]


def test_shutdown_tells_clients(engine: Engine) -> None:
    """Stopping the server sends shutting_down, closes with 1001 and cancels the streams in flight."""
    srv = start_server(engine)

    async def go() -> tuple[RawClient, tuple[int | None, str]]:
        client = await RawClient.connect(srv.url)
        await client.speak("a", LONG_TEXT, params=LONG_PARAMS)
        while not client.results.get("a") or not client.results["a"].audio:
            await client.next_message()
        stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
        closed = await client.closed()
        await stopping
        return client, closed

    client, (code, reason) = run(go())
    assert (code, reason) == (1001, "shutting_down")
    assert [e["code"] for e in client.general_errors] == ["shutting_down"]
    assert client.results["a"].done is None
    assert _eventually_idle(engine)


def _eventually_idle(engine: Engine, timeout: float = 5.0) -> bool:
    """Poll the engine until no stream is active (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while engine.snapshot().active and time.monotonic() < deadline:
        time.sleep(0.02)
    return engine.snapshot().active == 0


def test_server_class_closes_twice(engine: Engine) -> None:
    """BarkServer.close() is safe to call twice."""
    async def go() -> None:
        srv = BarkServer(engine, ServerConfig(port=0, model="random-tiny", offline=True))
        await srv.start()
        assert srv.port > 0
        await srv.close()
        await srv.close()

    run(go())
