"""The request layer's contract, the same on every door: one suite parametrised over the WebSocket protocol,
OpenAI's HTTP API and Wyoming, each driven through real sockets with its real client (tests/contract_doors.py).

Every case asserts the same normalised `Outcome` on each door it applies to (the request layer's error code the
wire form maps back to, audio, retry hint, the field named), then the door's exact wire form: WebSocket `error`
{code, id, retry_after_ms} (+ close code), HTTP status + OpenAI error body (+ Retry-After), Wyoming `error`
{text, code} followed by the connection closing. A case that cannot apply to a door is listed with a skip reason.

Servers run on port 0 with all three doors on, over tiny random engines (one with 8 slots, one with a single
slot and no queue); a case whose config differs gets its own server (they start in ~0.1 s). Nothing sleeps to
synchronise: clients wait on what they read, and /metrics is polled with a deadline only as a hang guard.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from wyoming.event import write_event
from wyoming.tts import Synthesize

from server.httpapi.errors import LAYER_ERRORS
from streaming.engine import Engine
from tests.contract_doors import DOORS, PARAMS, WYOMING_PARAMS, Outcome, WebSocketDoor, WyomingDoor, door
from tests.server_fixtures import engine  # noqa: F401 - the module's 8-slot engine (a fixture)
from tests.server_fixtures import RawClient, ServerThread, make_engine, metric_value, run, start_server

SHORT = "Hello there."  # one segment: ~0.3 s of CPU
MEDIUM = " ".join(f"Sentence number {n} is here." for n in range(16))  # a few segments: seconds, must complete
LONG = " ".join(f"Sentence number {n} is here." for n in range(40))  # ~7 segments: cut off before it ends
MAX_BUFFER_S = 0.5  # audio a stalled reader may owe before its stream pauses
SILENCE_S = 3.0  # request_text_timeout of the single-slot server: the neighbour runs inside this window
KEYS = ("k-contract-one", "k-contract-two")
NAMES = tuple(DOORS)
# every test client is 127.0.0.1: the per-address HTTP rates are not what this suite measures
COMMON: dict[str, Any] = dict(http_port=0, wyoming_port=0, wyoming_params=WYOMING_PARAMS, http_limit_per_s=1000.0,
                              http_limit_burst=1000, http_requests_per_s=1000.0, http_request_burst=1000)
NO_PARAMS = "Wyoming requests carry no params (the server's wyoming_params apply to all of them)"
NO_KEYS = "Wyoming has no API keys: per-key caps have no meaning there"
WHOLE_TEXT_ONLY = "the HTTP API has only whole-text requests"
NO_CANCEL = {"http": "the HTTP API has no cancel: a client stops by closing the connection (the disconnect case)",
             "wyoming": "Wyoming has no cancel event: Home Assistant stops by closing the connection"}


def doors(*names: str, skip: dict[str, str] | None = None) -> list[Any]:
    """`names` (default: every door) as parameters; the doors in `skip` listed as skipped with their reason."""
    skip = skip or {}
    return [pytest.param(n, marks=pytest.mark.skip(reason=skip[n])) if n in skip else n for n in names or NAMES]


# --- servers --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main(engine: Engine) -> Iterator[ServerThread]:  # noqa: F811 - the module's 8-slot engine
    """Every door on, default caps: the cases that need nothing else."""
    srv = start_server(engine, **COMMON)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def single_engine() -> Iterator[Engine]:
    eng = make_engine(max_streams=1, max_queue=0)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def single(single_engine: Engine) -> Iterator[ServerThread]:
    """One engine slot, no queue, and a short text-silence deadline."""
    srv = start_server(single_engine, max_streams=1, max_queue=0, request_text_timeout=SILENCE_S, **COMMON)
    yield srv
    srv.stop()


@pytest.fixture
def serve(engine: Engine) -> Iterator[Callable[..., ServerThread]]:  # noqa: F811
    """serve(**config) -> a server with every door on and that config, over the 8-slot engine; stopped after."""
    started: list[ServerThread] = []

    def start(**config: Any) -> ServerThread:
        srv = start_server(engine, **{**COMMON, **config})
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def reference(main: ServerThread) -> bytes:
    """SHORT's audio through the WebSocket: every door must hand out these very bytes (s16le, 24 kHz)."""
    out = run(WebSocketDoor(main).speak(SHORT))
    assert out.served, out
    return out.audio


# --- /metrics, polled with a deadline -------------------------------------------------------------------------

FINISHED = re.compile(r'^bark_requests_finished_total\{reason="([a-z_]+)"\} (\S+)$', re.M)


def metrics(srv: ServerThread) -> str:
    status, _, text = srv.http("/metrics")
    assert status == 200, text[:200]
    return text


def finished(text: str) -> dict[str, float]:
    """bark_requests_finished_total by reason."""
    return {m.group(1): float(m.group(2)) for m in FINISHED.finditer(text)}


async def poll(srv: ServerThread, predicate: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
    """/metrics until `predicate(text)` holds; fail after `timeout` seconds (a hang guard, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await asyncio.to_thread(metrics, srv)
        if predicate(text):
            return text
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)  # polling interval, bounded by the deadline above


def active(text: str) -> float:
    return metric_value(text, "bark_active_streams")


async def settled(srv: ServerThread, before: dict[str, float], want: dict[str, int]) -> None:
    """Wait until no engine stream is active and requests finished since `before` add up to `want`; then they
    must be exactly `want`: one reason per request, the right one."""
    def moved(text: str) -> dict[str, float]:
        after = finished(text)
        return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}

    text = await poll(srv, lambda t: active(t) == 0 and sum(moved(t).values()) >= sum(want.values()),
                      f"finished {want} with no stream active")
    assert moved(text) == want


# --- the wire forms -----------------------------------------------------------------------------------------


def check_refusal_wire(out: Outcome, code: str, *, retry: bool = False) -> None:
    """The door's exact wire form of a request refused (or failed) with the layer's `code`."""
    if out.door == "http":
        status, kind, openai_code = LAYER_ERRORS[code]
        error = out.wire["error"]
        assert (out.status, error["type"], error["code"]) == (status, kind, openai_code), out
        assert error["message"]
        if retry:
            assert int(out.wire["headers"]["retry-after"]) >= 1, out
    elif out.door == "websocket":
        error = out.wire["error"]
        assert error["type"] == "error" and error["code"] == code and error["message"], out
        assert "id" in error, out  # the request's error, not the connection's
        if retry:
            assert error["retry_after_ms"] > 0, out
        assert not out.closed, out  # a request's refusal leaves the connection open
    else:
        assert out.wire["code"] == code and out.message, out
        assert out.wire["types"][-1] == "error" and out.closed, out  # the error event, then the connection closes


def check_handshake_wire(out: Outcome, status: int) -> None:
    """A WebSocket upgrade refused with `status` (no protocol yet: a plain HTTP answer) and Retry-After."""
    assert out.wire["handshake"] == status and out.closed, out
    assert out.retry_after_s is not None and out.retry_after_s >= 1, out  # (Retry-After)


# --- 0. the same request, the same audio ---------------------------------------------------------------------


@pytest.mark.parametrize("name", doors())
def test_the_same_request_gives_the_same_audio_on_every_door(main: ServerThread, reference: bytes, name: str) -> None:
    """A short greedy request is served with byte-identical audio on every door, and counted as one `end`."""
    before = finished(metrics(main))

    async def go() -> Outcome:
        out = await door(main, name).speak(SHORT)
        await settled(main, before, {"end": 1})
        return out

    out = run(go())
    assert out.served and out.audio == reference, out


# --- 1. unknown voice ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", doors())
def test_an_unknown_voice_is_refused_and_disturbs_nothing(main: ServerThread, reference: bytes, name: str) -> None:
    """A voice the server does not have: unknown_voice naming `voice` (HTTP 400 param voice), no request
    started; the next request on the door is served as before."""
    d = door(main, name)
    before = metrics(main)

    async def go() -> tuple[Outcome, str, Outcome]:
        refused = await d.speak(SHORT, voice="v2/xx_speaker_99")
        after = await asyncio.to_thread(metrics, main)
        return refused, after, await d.speak(SHORT)

    refused, after, next_one = run(go())
    assert "unknown_voice" in refused.codes and refused.field == "voice" and not refused.audio, refused
    assert metric_value(after, "bark_requests_total") == metric_value(before, "bark_requests_total")
    assert active(after) == 0
    check_refusal_wire(refused, "unknown_voice")
    assert next_one.served and next_one.audio == reference, next_one


# --- 2. bad fields ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", doors(skip={"wyoming": NO_PARAMS}))
def test_a_param_out_of_range_is_bad_field_naming_it(main: ServerThread, name: str) -> None:
    """params.text_temp out of range: bad_field naming params.text_temp (HTTP 400 param params.text_temp)."""
    out = run(door(main, name).speak(SHORT, params={**PARAMS, "text_temp": 50.0}))
    assert "bad_field" in out.codes and out.field == "params.text_temp" and not out.audio, out
    check_refusal_wire(out, "bad_field")


@pytest.mark.parametrize("name", [
    "websocket",
    pytest.param("http", marks=pytest.mark.xfail(strict=True, reason=(
        "server/httpapi/speech.py parse_speech turns every parse_params error into bad_field(exc.field or "
        "'params', code='invalid_value'), and protocol/params.py raises unknown_field without field=: an unknown "
        "params key (layer code unknown_field, which LAYER_ERRORS maps to 400 unknown_parameter, as the HTTP API "
        "answers an unknown top-level key) comes out as 400 invalid_value with param 'params', while the "
        "WebSocket answers unknown_field naming params.bogus"))),
    pytest.param("wyoming", marks=pytest.mark.skip(reason=NO_PARAMS)),
])
def test_an_unknown_param_key_is_unknown_field_naming_it(main: ServerThread, name: str) -> None:
    """An unknown params key: unknown_field naming params.bogus (HTTP 400 unknown_parameter)."""
    out = run(door(main, name).speak(SHORT, params={**PARAMS, "bogus": 1}))
    assert out.codes == {"unknown_field"}, out
    assert out.field == "params.bogus" and not out.audio, out
    check_refusal_wire(out, "unknown_field")


@pytest.mark.parametrize("name", doors())
def test_a_voice_that_is_not_a_name_is_bad_field_naming_voice(main: ServerThread, name: str) -> None:
    """`voice` of the wrong type (a number): bad_field naming voice, on every door."""
    out = run(door(main, name).speak(SHORT, voice=42))
    assert "bad_field" in out.codes and out.field == "voice" and not out.audio, out
    check_refusal_wire(out, "bad_field")


@pytest.mark.parametrize("name", doors(skip={
    "websocket": "protocol v1 has no speed field (an extra field is unknown_field)",
    "wyoming": "Wyoming's synthesize has no speed"}))
def test_a_speed_out_of_range_is_bad_field_naming_speed(main: ServerThread, name: str) -> None:
    """HTTP `speed: 9`: 400 invalid_value with param speed."""
    out = run(door(main, name).speak(SHORT, speed=9))
    assert "bad_field" in out.codes and out.field == "speed" and not out.audio, out
    check_refusal_wire(out, "bad_field")


# --- 3. overload -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", doors())
def test_a_full_server_refuses_with_overloaded_and_a_retry_hint(single: ServerThread, name: str) -> None:
    """One slot, no queue: while a request holds the slot, a second one on the same door gets overloaded with a
    retry hint (retry_after_ms, Retry-After; Wyoming's error event has no retry field: its text says when), and
    the first request still completes."""
    d = door(single, name)
    before = finished(metrics(single))

    async def go() -> tuple[Outcome, Outcome]:
        holder = await d.begin(MEDIUM)
        await holder.first_audio()
        refused = await d.speak(SHORT)
        return refused, await holder.finish()

    refused, held = run(go())
    assert "overloaded" in refused.codes and not refused.audio, refused
    if name == "wyoming":
        assert "retry after" in refused.message, refused
    else:
        assert refused.retry_after_s is not None and refused.retry_after_s > 0, refused
    check_refusal_wire(refused, "overloaded", retry=True)
    assert held.served, held
    run(settled(single, before, {"end": 1}))  # the refused request never started


# --- 4. cancel and disconnect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", doors(skip=NO_CANCEL))
def test_cancel_mid_stream_frees_the_slot_and_counts_cancelled(main: ServerThread, name: str) -> None:
    """A WebSocket `cancel` mid-stream: done(cancelled) with the audio so far, the engine slot freed, and the
    request counted once, as cancelled."""
    before = finished(metrics(main))

    async def go() -> Outcome:
        job = await door(main, name).begin(LONG)
        await job.first_audio()
        out = await job.cancel()
        await settled(main, before, {"cancelled": 1})
        return out

    out = run(go())
    assert out.reason == "cancelled" and not out.codes and out.audio, out


@pytest.mark.parametrize("name", doors())
def test_a_dropped_connection_frees_the_slot_and_counts_disconnected(main: ServerThread, name: str) -> None:
    """The client goes away mid-stream: the engine slot is freed and the request counted once, as disconnected."""
    before = finished(metrics(main))

    async def go() -> None:
        job = await door(main, name).begin(LONG)
        await job.first_audio()
        await job.drop()
        await settled(main, before, {"disconnected": 1})

    run(go())


# --- 5. caps per address, across doors -------------------------------------------------------------------------

PAIRS = [("websocket", "websocket"), ("http", "http"), ("wyoming", "wyoming"), ("websocket", "http"),
         ("http", "wyoming"), ("wyoming", "websocket")]


@pytest.mark.parametrize("first, second", PAIRS)
def test_requests_per_address_are_capped_across_doors(serve: Callable[..., ServerThread], first: str,
                                                      second: str) -> None:
    """max_requests_per_ip=1: with a request in flight through one door, a request through another (or the same)
    door from the same address gets rate_limited with a retry hint (HTTP 429); once the first ends, it is served."""
    srv = serve(max_requests_per_ip=1)
    before = finished(metrics(srv))

    async def go() -> tuple[Outcome, Outcome]:
        job = await door(srv, first).begin(LONG)
        await job.first_audio()
        refused = await door(srv, second).speak(SHORT)
        await job.drop()
        await settled(srv, before, {"disconnected": 1})
        return refused, await door(srv, second).speak(SHORT)

    refused, again = run(go())
    assert "rate_limited" in refused.codes and not refused.audio, refused
    if second != "wyoming":  # (Wyoming's error event has no retry field)
        assert refused.retry_after_s is not None and refused.retry_after_s > 0, refused
    check_refusal_wire(refused, "rate_limited", retry=True)
    assert again.served, again


@pytest.mark.parametrize("refused_door", NAMES)
def test_connections_per_address_are_capped_across_doors(serve: Callable[..., ServerThread],
                                                         refused_door: str) -> None:
    """max_connections_per_ip=2: with a connection open on each of two doors, one on the third door is refused
    with rate_limited and closed (WebSocket handshake 429, HTTP 429, Wyoming `error` rate_limited + close)."""
    srv = serve(max_connections_per_ip=2)

    async def go() -> Outcome:
        held = [await door(srv, n).hold_connection() for n in NAMES if n != refused_door]
        try:
            return await door(srv, refused_door).speak(SHORT)
        finally:
            for connection in held:
                await connection.close()

    out = run(go())
    assert "rate_limited" in out.codes and not out.audio, out
    if refused_door == "websocket":
        check_handshake_wire(out, 429)
    elif refused_door == "http":
        assert out.status == 429 and out.wire["error"]["code"] == "rate_limit_exceeded", out
        assert "--max-connections-per-ip" in out.message and int(out.wire["headers"]["retry-after"]) >= 1, out
    else:
        assert out.wire["code"] == "rate_limited" and out.wire["types"] == ["error"] and out.closed, out


# --- 6. caps per API key ---------------------------------------------------------------------------------------

KEY_PAIRS = [("websocket", "websocket"), ("http", "http"), ("websocket", "http"), ("http", "websocket"),
             pytest.param("wyoming", "wyoming", marks=pytest.mark.skip(reason=NO_KEYS))]


@pytest.mark.parametrize("first, second", KEY_PAIRS)
def test_requests_per_key_are_capped_across_doors(serve: Callable[..., ServerThread], first: str,
                                                  second: str) -> None:
    """max_streams_per_key=1: with a request in flight under key one, another under key one on any door gets
    rate_limited (HTTP 429), while one under key two from the same address is served."""
    srv = serve(api_keys=KEYS, max_streams_per_key=1, public_metrics=True)
    before = finished(metrics(srv))

    async def go() -> tuple[Outcome, Outcome]:
        job = await door(srv, first, KEYS[0]).begin(LONG)
        await job.first_audio()
        refused = await door(srv, second, KEYS[0]).speak(SHORT)
        other_key = await door(srv, second, KEYS[1]).speak(SHORT)
        await job.drop()
        await settled(srv, before, {"disconnected": 1, "end": 1})
        return refused, other_key

    refused, other_key = run(go())
    assert "rate_limited" in refused.codes and not refused.audio, refused
    assert refused.retry_after_s is not None and refused.retry_after_s > 0, refused
    assert "max_streams_per_key" in refused.message, refused
    check_refusal_wire(refused, "rate_limited", retry=True)
    assert other_key.served, other_key


# --- 7. silence after text -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", doors(skip={"http": WHOLE_TEXT_ONLY}))
def test_a_request_silent_after_its_text_gives_its_slot_back_then_idle_timeout(single: ServerThread,
                                                                                name: str) -> None:
    """One sentence then silence: its audio arrives, the engine slot is given back while it waits (a neighbour
    is served meanwhile on the single-slot server), and after request_text_timeout it ends with idle_timeout.
    (A sentence is complete once another starts: streaming/textprep.py; so the text is SHORT + " And then".)"""
    d = door(single, name)
    before = finished(metrics(single))

    async def go() -> tuple[Outcome, Outcome, float]:
        job = await d.start_and_feed(SHORT + " And then")
        await job.first_audio()
        await poll(single, lambda t: active(t) == 0, "the waiting request gives its slot back")
        neighbour = await d.speak(SHORT)
        timeouts = finished(await asyncio.to_thread(metrics, single)).get("idle_timeout", 0.0)
        return neighbour, await job.finish(), timeouts

    neighbour, out, timeouts_meanwhile = run(go())
    assert neighbour.served, neighbour
    assert timeouts_meanwhile == before.get("idle_timeout", 0.0)  # the silent request was still open meanwhile
    assert out.codes == {"idle_timeout"} and out.audio, out
    assert "request_text_timeout" in out.message, out
    if name == "websocket":  # the request's error and done(error); the connection goes on
        assert out.wire["error"]["id"] == "job" and out.wire["done"]["reason"] == "error" and not out.closed, out
    else:  # the audio of the sentence, then the error event, then the connection closes
        types = out.wire["types"]
        assert types[0] == "audio-start" and "audio-chunk" in types and types[-1] == "error" and out.closed, out
    run(settled(single, before, {"end": 1, "idle_timeout": 1}))


# --- 8. a reader that stops reading ----------------------------------------------------------------------------


class Stalled:
    """A client that sends LONG and never reads: WebSocket with a one-frame client queue (websockets then stops
    reading the socket, so pings go unanswered), HTTP and Wyoming over a raw socket with a 2 KiB receive buffer
    and a small MSS."""

    def __init__(self, srv: ServerThread, name: str) -> None:
        self.srv, self.name = srv, name
        self.ws: RawClient | None = None
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        srv = self.srv
        assert srv.server is not None
        if self.name == "websocket":
            self.ws = await RawClient.connect_with(srv.url, max_queue=1)
            await self.ws.send(WebSocketDoor.speak_message("slow", LONG, None, PARAMS, {}))
            return
        sock = self.sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        # a small MSS keeps the server's send buffer small too (Linux sizes it from cwnd x MSS: ~4 MB on loopback's
        # 64 KiB MSS, ~100 KB on 536 bytes), so its writes block after ~1 s of audio instead of ~20
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        if self.name == "http":  # speed 0.5: twice the bytes per generated second (24 kHz is all it has)
            body = json.dumps({"model": "tts-1", "input": LONG, "response_format": "pcm", "speed": 0.5,
                               "params": PARAMS}).encode()
            await asyncio.to_thread(sock.connect, ("127.0.0.1", srv.server.http_port))
            sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        else:  # the server sends 48 kHz (wyoming_sample_rate): twice the bytes
            await asyncio.to_thread(sock.connect, ("127.0.0.1", srv.server.wyoming_port))
            with sock.makefile("wb") as out:
                write_event(Synthesize(text=LONG).event(), out)  # the wyoming library's framing

    async def closed_by_server(self) -> tuple[int | None, str] | bool:
        """Read what is left: the WebSocket's close (code, reason); else True once the socket ends or resets."""
        if self.ws is not None:
            return await asyncio.wait_for(self.ws.closed(), 30)
        assert self.sock is not None

        def drain() -> bool:
            self.sock.settimeout(30)  # type: ignore[union-attr]
            try:
                while self.sock.recv(1 << 16):  # type: ignore[union-attr]
                    pass
            except ConnectionResetError:
                pass
            return True
        try:
            return await asyncio.to_thread(drain)
        finally:
            self.sock.close()


@pytest.mark.parametrize("name", NAMES)
def test_a_reader_that_stops_reading_is_cut_off_as_slow_consumer(serve: Callable[..., ServerThread],
                                                                 name: str) -> None:
    """A client that stops reading: its stream pauses (audio owed bounded by max_buffer_s), a neighbour on the same door is served
    meanwhile, then after slow_consumer_timeout the request ends as slow_consumer, its slot freed and the
    connection dropped (WebSocket: `error` slow_consumer and close 1008)."""
    srv = serve(slow_consumer_timeout=2.0, max_buffer_s=MAX_BUFFER_S, probe_interval=0.05,
                wyoming_sample_rate=48_000, close_timeout=30.0)
    before = finished(metrics(srv))
    stalled = Stalled(srv, name)

    async def go() -> tuple[float, Outcome, Any]:
        await stalled.start()
        paused = await poll(srv, lambda t: metric_value(t, "bark_paused_streams") == 1, "the stalled stream pauses",
                            60)
        owed = metric_value(paused, "bark_unacknowledged_audio_seconds")
        neighbour = await door(srv, name).speak(SHORT)
        await settled(srv, before, {"end": 1, "slow_consumer": 1})
        return owed, neighbour, await stalled.closed_by_server()

    owed, neighbour, closed = run(go())
    assert 0 < owed < MAX_BUFFER_S + 1.0, owed  # the bound: max_buffer_s plus one engine chunk (< 1 s)
    assert neighbour.served, neighbour
    if name == "websocket":
        assert closed == (1008, "slow_consumer")
        assert stalled.ws is not None and [e["code"] for e in stalled.ws.general_errors] == ["slow_consumer"]
    else:
        assert closed is True


# --- 9. drain --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_drain_refuses_new_requests_with_shutting_down_and_finishes_the_one_in_flight(
        serve: Callable[..., ServerThread], name: str) -> None:
    """The server drains while a request is in flight on the door: new requests there get shutting_down (HTTP 503
    + Retry-After; a new WebSocket upgrade 503 + Retry-After, a new request on an open WebSocket `error`
    shutting_down; Wyoming `error` shutting_down + close, on a new or an open connection); the one in flight
    completes."""
    srv = serve()
    d = door(srv, name)
    before = finished(metrics(srv))

    async def go() -> tuple[Outcome, Outcome | None, Outcome]:
        assert srv.server is not None and srv.loop is not None
        opened: Any = None
        if isinstance(d, WebSocketDoor):
            opened = await d.connect()
        elif isinstance(d, WyomingDoor):
            opened = await d.open_connection()
        job = await d.begin(MEDIUM)
        await job.first_audio()
        drain = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(srv.server.drain(60.0), srv.loop))
        await _until_draining(srv)
        fresh = await d.speak(SHORT)
        on_open = await d.speak(SHORT, conn=opened) if opened is not None else None
        assert not drain.done()  # it waits for the request in flight
        in_flight = await job.finish()
        await drain
        return fresh, on_open, in_flight

    fresh, on_open, in_flight = run(go())
    assert "shutting_down" in fresh.codes and not fresh.audio, fresh
    assert fresh.retry_after_s is not None or name == "wyoming", fresh
    if name == "websocket":
        check_handshake_wire(fresh, 503)
    else:
        check_refusal_wire(fresh, "shutting_down", retry=True)
    if on_open is not None:
        assert on_open.codes == {"shutting_down"} and not on_open.audio, on_open
        check_refusal_wire(on_open, "shutting_down", retry=name == "websocket")
    assert in_flight.served, in_flight
    run(settled(srv, before, {"end": 1}))


async def _until_draining(srv: ServerThread, timeout: float = 10.0) -> None:
    """Poll /healthz until it says draining (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await asyncio.to_thread(srv.http, "/healthz")
        if status == 503 and json.loads(body).get("reason") == "draining":
            return
        assert time.monotonic() < deadline, f"not draining within {timeout} s: {status} {body}"
        await asyncio.sleep(0.01)  # polling interval, bounded by the deadline
