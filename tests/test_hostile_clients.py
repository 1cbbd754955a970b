"""Hostile or broken clients against the HTTP API and the Wyoming port: each case once failed with a 500 and a
traceback, held a connection (or an engine stream) forever, or logged a traceback any client could repeat.

- HTTP: JSON nested too deep for the parser, a lone surrogate in `input`, a body whose Content-Encoding does not
  decode: each a 400 in OpenAI's shape naming the field; a body that never ends: 408; half a request head:
  closed after the idle timeout; a request head aiohttp cannot parse: answered without an ERROR traceback.
- Wyoming: a lone surrogate in `text`: an `error` event; a bug while a stream takes text: the connection closes
  and the engine stream is released; a peer that resets the connection: no traceback.
- Protocol: a msgpack frame that fails without a reason still says why.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from protocol import ProtocolError
from protocol.wire import unpack_map
from streaming.stream import StreamHandle
from tests.server_fixtures import PARAMS, ServerThread, engine, start_server  # noqa: F401 - engine is a fixture

SOCKET_TIMEOUT = 20.0  # seconds a test socket waits for the server: a hang fails the test, never blocks it
BODY = {"model": "tts-1", "input": "Hi.", "response_format": "pcm", "params": PARAMS}


@pytest.fixture(scope="module")
def srv(engine) -> Iterator[ServerThread]:  # noqa: F811 - module-scoped engine from server_fixtures
    # short idle and open timeouts, so the cases that wait on them end in about a second
    server = start_server(engine, http_port=0, wyoming_port=0, idle_timeout=1.0, open_timeout=1.0,
                          http_requests_per_s=1000.0, http_request_burst=1000,
                          wyoming_params=tuple(PARAMS.items()))
    yield server
    server.stop()


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """errors() -> the ERROR records (tracebacks) the server logged so far in the test; it asserts there are none."""
    caplog.set_level(logging.INFO)
    return lambda: [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def exchange(port: int, data: bytes) -> bytes:
    """Send `data`, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65_536):
            out += chunk
        return out


def post(srv: ServerThread, body: bytes, headers: bytes = b"") -> tuple[int, Any]:
    """A raw POST /v1/audio/speech: (status, parsed JSON body)."""
    head = (b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n" % len(body)) + headers + b"\r\n"
    raw = exchange(srv.server.http_port, head + body)
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])


def assert_error(answer: tuple[int, Any], status: int, param: str, code: str) -> None:
    assert answer[0] == status, answer
    error = answer[1]["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert error["message"].startswith(f"{param}:"), error


def test_http_json_nested_too_deep_is_a_400_not_a_500(srv, errors) -> None:
    deep = b'{"model": "tts-1", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"  # within the size limit
    assert_error(post(srv, deep), 400, "body", "invalid_json")
    assert not errors()


def test_http_a_number_of_thousands_of_digits_is_a_400_in_our_words(srv, errors) -> None:
    body = b'{"model": "tts-1", "input": "Hello.", "speed": ' + b"9" * 5_000 + b"}"
    answer = post(srv, body)
    assert_error(answer, 400, "body", "invalid_json")
    assert "more digits" in answer[1]["error"]["message"] and "sys." not in answer[1]["error"]["message"]
    assert not errors()


def test_http_lone_surrogate_is_a_400_naming_the_field(srv, errors) -> None:
    for field in ("input", "model"):
        body = json.dumps({**BODY, field: "\ud800 hello"}).encode()  # json.dumps writes the \ud800 escape
        assert_error(post(srv, body), 400, field, "invalid_value")
    assert not errors()


def test_http_body_whose_content_encoding_does_not_decode_is_a_400(srv, errors) -> None:
    body = json.dumps(BODY).encode()  # not gzip, though the header says so
    assert_error(post(srv, body, b"Content-Encoding: gzip\r\n"), 400, "body", "invalid_body")
    assert not errors()


@pytest.mark.parametrize("partial", [
    b"Content-Length: 100\r\n\r\n{\"model\": ",  # fewer bytes than announced
    b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n",  # a chunked body without its last chunk
])
def test_http_body_that_never_ends_gets_408(srv, errors, partial: bytes) -> None:
    with socket.create_connection(("127.0.0.1", srv.server.http_port), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n" + partial)
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.endswith(b"}\n"):  # the answer; aiohttp then lingers a while
            chunk = sock.recv(65_536)
            assert chunk, raw
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 408 "), raw[:200]
    error = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
    assert (error["param"], error["code"]) == ("body", "request_timeout"), error
    assert not errors()


def test_http_half_a_request_head_is_closed_after_the_idle_timeout(srv) -> None:
    # aiohttp's own keep-alive timeout is an hour: 256 such connections would lock everyone else out for it
    assert exchange(srv.server.http_port, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Le") == b""


def test_http_unparsable_request_heads_log_no_traceback(srv, errors) -> None:
    for head in (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10_000 + b"\r\n\r\n",
                 b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
                 b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}"):
        assert exchange(srv.server.http_port, head).startswith(b"HTTP/1.0 400 "), head[:40]
    assert srv.http("/healthz")[0] == 200
    assert not errors()


# --- Wyoming ------------------------------------------------------------------------------------------


def wyoming_events(raw: bytes) -> list[dict[str, Any]]:
    """The events in what a Wyoming server sent (headers with their data merged; payloads skipped)."""
    events, rest = [], raw
    while rest.strip():
        line, rest = rest.split(b"\n", 1)
        header = json.loads(line)
        data_length, payload_length = header.get("data_length") or 0, header.get("payload_length") or 0
        if data_length:
            header["data"] = {**header.get("data", {}), **json.loads(rest[:data_length])}
        rest = rest[data_length + payload_length:]
        events.append(header)
    return events


def event(kind: str, data: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"type": kind, "data": data or {}}).encode() + b"\n"


def test_wyoming_lone_surrogate_text_gets_an_error_event(srv, errors) -> None:
    port = srv.server.wyoming_port
    for sent in (event("synthesize", {"text": "\ud800 hello"}),
                 event("synthesize-start") + event("synthesize-chunk", {"text": "\ud800 hello"})
                 + event("synthesize-stop")):
        errors_sent = [e["data"] for e in wyoming_events(exchange(port, sent)) if e["type"] == "error"]
        assert [e["code"] for e in errors_sent] == ["bad_field"], errors_sent
        assert errors_sent[0]["text"].startswith("text:")
    srv.wait_metric("bark_queue_depth", lambda v: v == 0)
    srv.wait_metric("bark_active_streams", lambda v: v == 0)
    assert not errors()


def test_wyoming_a_bug_while_a_stream_ends_closes_the_connection_and_frees_the_stream(srv, caplog,
                                                                                      monkeypatch) -> None:
    def broken(self: StreamHandle) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(StreamHandle, "end", broken)
    caplog.set_level(logging.INFO)
    # synthesize-stop fails after the stream stopped taking text: before the fix the session waited forever for a
    # request whose text never ended (the connection open, the engine stream queued)
    raw = exchange(srv.server.wyoming_port, event("synthesize-start") + event("synthesize-chunk", {"text": "Hi"})
                   + event("synthesize-stop"))
    assert raw == b""
    srv.wait_metric("bark_queue_depth", lambda v: v == 0)
    srv.wait_metric("bark_active_streams", lambda v: v == 0)
    assert any("session failed" in r.getMessage() for r in caplog.records)  # the bug itself is logged


def test_wyoming_peer_reset_logs_no_traceback(srv, caplog, errors) -> None:
    port = srv.server.wyoming_port

    def logged(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records if r.name == "server.wyoming.server")

    for sent in (b'{"type": "synthesize", "data_length": 100}\n{"te',  # inside an event
                 event("ping") + event("ping")):  # between events (or while answering them)
        opened, closed = logged("open from"), logged("closed")
        with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
            sock.sendall(sent)
            wait_until(lambda: logged("open from") > opened)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        wait_until(lambda: logged("closed") > closed)
    assert [e["type"] for e in wyoming_events(exchange(port, event("describe")))][:1] == ["info"]
    assert not errors()


def wait_until(predicate: Any) -> None:
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.02)  # polling interval, bounded by the deadline above


# --- protocol -----------------------------------------------------------------------------------------


def test_msgpack_failure_without_a_reason_still_says_why() -> None:
    with pytest.raises(ProtocolError) as caught:
        unpack_map(b"\xc1", max_bytes=64, max_map_keys=8, max_array_items=8, max_depth=4)  # 0xc1: never used
    assert caught.value.code == "bad_frame"
    assert not caught.value.message.endswith(": "), caught.value.message
