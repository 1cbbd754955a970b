"""Every bad input gets its error code and message; healthy streams elsewhere finish intact.

Each case opens a healthy request on another connection and one on the same
connection, then sends the bad input. A non-fatal error leaves both intact; a
fatal one closes only its own connection, with the close code the protocol names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from server.config import ServerConfig
from server.enginelink import EngineInfo
from protocol import Limits
from streaming.engine import Engine, EngineOverloaded, EngineSnapshot
from streaming.events import AudioChunk, StreamDone, StreamStats
from tests.server_fixtures import (  # noqa: F401 - engine and server are fixtures
    PARAMS,
    TEST_LIMITS,
    RawClient,
    Result,
    ServerThread,
    engine,
    engine_audio,
    quantise_s16,
    run,
    server,
)

TEXT = "Hello there."
S16_TOLERANCE = 1.0 / 32767.0 + 1e-7
Bad = Callable[[RawClient], Awaitable[None]]


@pytest.fixture(scope="module")
def want(engine: Engine) -> np.ndarray:
    """The engine's own audio for TEXT, as s16 decodes it."""
    return quantise_s16(run(engine_audio(engine, TEXT)))


def assert_intact(result: Result, want: np.ndarray) -> None:
    assert result.done is not None and result.done["reason"] == "end", result.done
    assert result.order.count("done") == 1 and result.order[-1] == "done", result.order
    result.check_contiguous()
    got = result.samples()
    assert got.shape == want.shape and np.abs(got - want).max(initial=0.0) <= S16_TOLERANCE


def all_errors(client: RawClient) -> list[dict[str, Any]]:
    return client.general_errors + [e for r in client.results.values() for e in r.errors]


def check(server: ServerThread, want: np.ndarray, bad: Bad, *, close_code: int | None = None) -> dict[str, Any]:
    """Run `bad` beside healthy streams; return the error it got (and check the close when fatal)."""
    async def go() -> dict[str, Any]:
        other = await RawClient.connect(server.url)
        conn = await RawClient.connect(server.url)
        await other.speak("other", TEXT)
        await conn.speak("mine", TEXT)
        await bad(conn)
        if close_code is None:
            while not all_errors(conn):
                await conn.next_message()
            error = all_errors(conn)[0]
            assert_intact((await conn.until_done("mine"))["mine"], want)
            await conn.close()
        else:
            code, reason = await conn.closed()
            errors = all_errors(conn)
            assert len(errors) == 1, errors
            error = errors[0]
            assert (code, reason) == (close_code, error["code"])
        assert_intact((await other.until_done("other"))["other"], want)
        await other.close()
        return error
    return run(go())


def raw(frame: bytes | str) -> Bad:
    async def send(conn: RawClient) -> None:
        await conn.ws.send(frame)
    return send


def message(msg: dict[str, Any]) -> Bad:
    return raw(msgpack.packb(msg))


def test_not_msgpack(server: ServerThread, want: np.ndarray) -> None:
    """Bytes that are not msgpack get bad_frame; the connection carries on."""
    error = check(server, want, raw(b"\xc1\x00garbage"))
    assert error["code"] == "bad_frame" and "not a valid msgpack message" in error["message"]
    assert "id" not in error


def test_not_a_map(server: ServerThread, want: np.ndarray) -> None:
    """A msgpack value that is not a map gets bad_frame naming what it got."""
    error = check(server, want, raw(msgpack.packb([1, 2, 3])))
    assert (error["code"], error["message"]) == ("bad_frame", "expected a msgpack map, got array")


def test_text_frame_closes_1003(server: ServerThread, want: np.ndarray) -> None:
    """A text frame gets text_frame, then the connection closes with 1003."""
    error = check(server, want, raw('{"type": "speak"}'), close_code=1003)
    assert error["code"] == "text_frame" and "binary frames" in error["message"]


def test_unknown_type(server: ServerThread, want: np.ndarray) -> None:
    """An unknown `type` gets unknown_type listing the valid ones, with the message's id."""
    error = check(server, want, message({"type": "sing", "id": "x1"}))
    assert (error["code"], error["id"]) == ("unknown_type", "x1")
    assert error["message"].startswith("type: 'sing' is not one of speak, start, text")


def test_missing_field(server: ServerThread, want: np.ndarray) -> None:
    """A speak without text gets missing_field naming the field."""
    error = check(server, want, message({"type": "speak", "id": "x1"}))
    assert (error["code"], error["message"], error["id"]) == ("missing_field", "text: missing", "x1")


def test_wrongly_typed_field(server: ServerThread, want: np.ndarray) -> None:
    """A field of the wrong type gets bad_field naming the field and both types."""
    error = check(server, want, message({"type": "speak", "id": "x1", "text": 5}))
    assert (error["code"], error["message"]) == ("bad_field", "text: expected a string, got int")


def test_wrongly_typed_param(server: ServerThread, want: np.ndarray) -> None:
    """A params value of the wrong type gets bad_field naming params.<key>."""
    error = check(server, want, message({"type": "speak", "id": "x1", "text": TEXT, "params": {"top_k": "50"}}))
    assert error["code"] == "bad_field" and error["message"].startswith("params.top_k: expected an integer")


def test_unknown_voice(server: ServerThread, want: np.ndarray) -> None:
    """A voice the server does not have gets unknown_voice naming it; no request opens."""
    error = check(server, want, message({"type": "speak", "id": "x1", "text": TEXT, "voice": "nobody_here"}))
    assert (error["code"], error["id"]) == ("unknown_voice", "x1")
    assert "'nobody_here'" in error["message"]


def test_voice_path_is_refused(server: ServerThread, want: np.ndarray) -> None:
    """A voice given as a file path is refused (clients never read server files)."""
    error = check(server, want, message({"type": "speak", "id": "x1", "text": TEXT, "voice": "/etc/voice.npz"}))
    assert error["code"] == "unknown_voice" and "is not a voice name" in error["message"]


def test_unknown_encoding(server: ServerThread, want: np.ndarray) -> None:
    """An encoding the protocol does not define gets bad_encoding listing the valid ones."""
    error = check(server, want, message({"type": "speak", "id": "x1", "text": TEXT, "encoding": "wav"}))
    assert error["code"] == "bad_encoding"
    assert error["message"] == ("encoding: 'wav' is not one of pcm_s16le, pcm_f32le, pcm_mulaw, pcm_alaw, "
                                "ogg_opus, mp3")


def test_duplicate_id(server: ServerThread, want: np.ndarray) -> None:
    """A speak reusing an id in flight gets duplicate_id; the original request finishes intact."""
    async def again(conn: RawClient) -> None:
        await conn.speak("mine", "Something else entirely.")

    error = check(server, want, again)
    assert (error["code"], error["id"]) == ("duplicate_id", "mine")
    assert "already in flight" in error["message"]


def test_unknown_id(server: ServerThread, want: np.ndarray) -> None:
    """text/flush/end/cancel for an id not in flight gets unknown_id."""
    error = check(server, want, message({"type": "cancel", "id": "ghost"}))
    assert (error["code"], error["id"]) == ("unknown_id", "ghost")
    assert error["message"].startswith("id: 'ghost' is not in flight")


def test_speak_over_request_limit(server: ServerThread, want: np.ndarray) -> None:
    """A speak over max_request_chars gets text_too_long; no request opens."""
    long_text = "a" * (TEST_LIMITS.max_request_chars + 1)
    error = check(server, want, message({"type": "speak", "id": "x1", "text": long_text}))
    assert error["code"] == "text_too_long"
    assert error["message"] == f"text: {len(long_text)} characters exceeds max_request_chars (2000)"


def test_text_over_message_limit_ends_request(server: ServerThread, want: np.ndarray) -> None:
    """A text message over max_text_chars gets text_too_long and ends only its own request with done(error)."""
    async def too_long(conn: RawClient) -> None:
        await conn.send({"type": "start", "id": "piece", "params": PARAMS})
        await conn.send({"type": "text", "id": "piece", "text": "b" * (TEST_LIMITS.max_text_chars + 1)})
        result = (await conn.until_done("piece"))["piece"]
        assert result.order[-2:] == ["error", "done"] and result.done["reason"] == "error"  # type: ignore[index]

    error = check(server, want, too_long)
    assert (error["code"], error["id"]) == ("text_too_long", "piece")
    assert error["message"] == "text: 201 characters exceeds max_text_chars (200)"


def test_text_over_request_total_ends_request(server: ServerThread, want: np.ndarray) -> None:
    """Text messages adding up to more than max_request_chars end the request with text_too_long."""
    async def too_much(conn: RawClient) -> None:
        await conn.send({"type": "start", "id": "piece", "params": PARAMS})
        for _ in range(TEST_LIMITS.max_request_chars // TEST_LIMITS.max_text_chars + 1):
            await conn.send({"type": "text", "id": "piece", "text": "word " * 40})
        await conn.until_done("piece")

    error = check(server, want, too_much)
    assert error["code"] == "text_too_long" and "request total of 2200 characters" in error["message"]


def test_too_many_ids(server: ServerThread, want: np.ndarray) -> None:
    """Opening more than max_ids_in_flight requests gets too_many_ids; the others go on."""
    async def crowd(conn: RawClient) -> None:
        for n in range(1, TEST_LIMITS.max_ids_in_flight):
            await conn.send({"type": "start", "id": f"s{n}", "params": PARAMS})
        await conn.speak("extra", TEXT)
        for n in range(1, TEST_LIMITS.max_ids_in_flight):
            await conn.send({"type": "cancel", "id": f"s{n}"})

    error = check(server, want, crowd)
    assert (error["code"], error["id"]) == ("too_many_ids", "extra")
    assert error["message"] == "id: 'extra' would be request 4 in flight; max_ids_in_flight is 3"


def test_oversized_frame_closes_1009(server: ServerThread, want: np.ndarray) -> None:
    """A frame over max_frame_bytes gets frame_too_large, then the connection closes with 1009."""
    frame = msgpack.packb({"type": "speak", "id": "x1", "text": "c" * TEST_LIMITS.max_frame_bytes})
    error = check(server, want, raw(frame), close_code=1009)
    assert error["code"] == "frame_too_large"
    assert error["message"] == f"frame of {len(frame)} bytes exceeds max_frame_bytes (4096)"


def test_huge_frame_closed_unread(server: ServerThread) -> None:
    """A frame beyond what the WebSocket layer reads closes the connection with 1009 straight away."""
    async def go() -> tuple[int | None, str]:
        conn = await RawClient.connect(server.url)
        await conn.ws.send(b"\x00" * (server.config.ws_max_size + 1))
        return await conn.closed()

    code, _ = run(go())
    assert code == 1009


# --- engine refusals and failures, through stub engines ---------------------------------


class _StubHandle:
    """An engine stream that emits one chunk, then fails."""

    def __init__(self) -> None:
        self.id = 1
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    pause = resume = feed = flush = end = lambda self, *a: None  # noqa: E731

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield AudioChunk(0, np.zeros(480, np.float32))
        yield StreamDone("error", 480, StreamStats(samples=480), error_code="internal", error="engine: boom")


class _StubLink:
    """An EngineLink (the server's one seam to the engine) whose submit is the test's function."""

    def __init__(self, submit: Callable[..., Any]) -> None:
        self.info = EngineInfo("stub", 8, 32)
        self.healthy = True
        self._submit = submit

    def snapshot(self) -> EngineSnapshot:
        return EngineSnapshot(0, 0, 0)

    async def submit(self, request: Any) -> Any:
        return self._submit(request)

    async def wait_failed(self) -> None:
        await asyncio.Event().wait()  # never: this engine does not die

    async def close(self) -> None:
        pass


def stub_server(submit: Callable[..., Any]) -> ServerThread:
    config = ServerConfig(port=0, model="stub", offline=True, limits=Limits())
    return ServerThread(_StubLink(submit), config).start()  # type: ignore[arg-type]


def speak_once(srv: ServerThread, *, until_done: bool) -> Result:
    """Speak one request; read until its done (or, without until_done, its first error)."""
    async def go() -> Result:
        conn = await RawClient.connect(srv.url)
        await conn.speak("r1", TEXT)
        await (conn.until_done("r1") if until_done else conn.next_error())
        await conn.close()
        return conn.results["r1"]
    return run(go())


def test_overloaded_engine() -> None:
    """EngineOverloaded becomes `overloaded` with retry_after_ms; no request opens."""
    def submit(*args: Any, **kw: Any) -> None:
        raise EngineOverloaded("engine: admission queue is full", retry_after_ms=1234)

    srv = stub_server(submit)
    try:
        result = speak_once(srv, until_done=False)
    finally:
        srv.stop()
    assert result.order == ["error"] and result.done is None
    error = result.errors[0]
    assert (error["code"], error["retry_after_ms"]) == ("overloaded", 1234)
    assert "retry after 1234 ms" in error["message"]


def test_engine_failure_ends_request_with_error() -> None:
    """A stream the engine fails sends its audio, then `error` (internal), then done(error)."""
    srv = stub_server(lambda *a, **kw: _StubHandle())
    try:
        result = speak_once(srv, until_done=True)
    finally:
        srv.stop()
    assert result.order == ["audio", "error", "done"]
    assert (result.errors[0]["code"], result.errors[0]["message"]) == ("internal", "engine: boom")
    assert result.done is not None and (result.done["reason"], result.done["samples"]) == ("error", 480)
