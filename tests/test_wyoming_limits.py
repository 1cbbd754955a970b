"""Wyoming's limits, with the wyoming library's client and raw sockets: an idle connection is closed (one with a
request in flight is not), a peer flooding events gets `rate_limited` and is closed, a stream that gets no text
fails with `idle_timeout`, a peer that stops reading is cut off as `slow_consumer` with its engine slot freed,
and connections past `max_connections` are refused with `overloaded`. Each case runs its own server (its limits)
over the module's engine."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from tests.server_fixtures import PARAMS, ServerThread, engine, run, start_server  # noqa: F401

WYOMING_PARAMS = tuple({**PARAMS, "seed": 7}.items())


@pytest.fixture
def serve(engine) -> Iterator:  # noqa: F811 - module-scoped engine from server_fixtures
    """start(**config) -> a Wyoming server with those limits; stopped after the test."""
    started: list[ServerThread] = []

    def start(**config: object) -> ServerThread:
        srv = start_server(engine, wyoming_port=0, wyoming_params=config.pop("wyoming_params", WYOMING_PARAMS),
                           **config)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def client(srv: ServerThread) -> AsyncTcpClient:
    assert srv.server is not None and srv.server.wyoming_port is not None
    return AsyncTcpClient("127.0.0.1", srv.server.wyoming_port, connect_timeout=10, read_timeout=60)


async def read_all(c: AsyncTcpClient) -> list[Event]:
    """Every event until the server closes the connection."""
    events = []
    while (event := await c.read_event()) is not None:
        events.append(event)
    return events


def error_codes(events: list[Event]) -> list[str]:
    return [Error.from_event(e).code for e in events if Error.is_type(e.type)]


def test_an_idle_connection_is_closed_but_not_while_it_talks_or_a_request_runs(serve) -> None:
    srv = serve(idle_timeout=1.0)

    async def go() -> tuple[int, list[str], list[Event]]:
        async with client(srv) as c:
            pongs = 0
            for _ in range(15):  # 1.5 s of pings, 0.1 s apart: never idle for 1 s
                await c.write_event(Ping(text="x").event())
                pongs += Pong.is_type((await c.read_event()).type)  # type: ignore[union-attr]
                await asyncio.sleep(0.1)
            # A stream whose sentence is unfinished is a request in flight: silence while it waits is not idling.
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text="The rest of this").event())
            await asyncio.sleep(2.5)
            await c.write_event(SynthesizeChunk(text=" sentence is here.").event())
            await c.write_event(SynthesizeStop().event())
            answer = []
            while (event := await c.read_event()) is not None:
                answer.append(event.type)
                if SynthesizeStopped.is_type(event.type):
                    break
            return pongs, answer, await read_all(c)  # then silence: the server closes the connection

    pongs, answer, after = run(go())
    assert pongs == 15
    assert "audio-chunk" in answer and answer[-2:] == ["audio-stop", "synthesize-stopped"], answer
    assert after == []  # closed without an error event: idling is not an error


def test_a_flood_of_events_is_refused_with_rate_limited_then_closed(serve) -> None:
    srv = serve(max_messages_per_s=2.0, message_burst=5)

    async def go() -> list[Event]:
        async with client(srv) as c:
            for _ in range(20):
                try:
                    await c.write_event(Ping(text="flood").event())
                except ConnectionError:
                    break
            return await read_all(c)

    events = run(go())
    assert error_codes(events) == ["rate_limited"], [e.type for e in events]
    assert events[-1].type == "error"
    pongs = sum(Pong.is_type(e.type) for e in events)
    assert 1 <= pongs <= 6, pongs  # the burst (5, plus what refilled meanwhile) was answered, nothing after
    assert srv.metric("bark_errors_total", 'code="rate_limited"') == 1


def test_a_stream_that_gets_no_text_fails_with_idle_timeout(serve) -> None:
    srv = serve(request_text_timeout=0.5)

    async def go() -> list[Event]:
        async with client(srv) as c:
            await c.write_event(SynthesizeStart().event())
            return await read_all(c)

    events = run(go())
    assert error_codes(events) == ["idle_timeout"], [e.type for e in events]
    assert not any(AudioChunk.is_type(e.type) for e in events)
    srv.wait_metric("bark_active_streams", lambda v: v == 0)
    assert srv.metric("bark_requests_finished_total", 'reason="idle_timeout"') == 1


def test_a_peer_that_stops_reading_is_cut_off_and_its_slot_freed(serve) -> None:
    """A raw socket with a 2 KiB receive buffer sends a long synthesize and never reads. Audio at 48 kHz fills
    the socket buffers; the engine stream pauses, and after slow_consumer_timeout the connection is dropped and
    the request counted as slow_consumer. The server goes on serving."""
    srv = serve(slow_consumer_timeout=1.0, wyoming_sample_rate=48_000,
                wyoming_params=tuple({**PARAMS, "max_semantic_tokens": 768}.items()))
    text = " ".join(f"Sentence number {n} is here." for n in range(40))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", srv.server.wyoming_port))  # type: ignore[union-attr]
        sock.sendall(_wire(text))
        srv.wait_metric("bark_active_streams", lambda v: v == 1)
        srv.wait_metric("bark_requests_finished_total", lambda v: v == 1, labels='reason="slow_consumer"',
                        timeout=120)
    srv.wait_metric("bark_active_streams", lambda v: v == 0)

    async def again() -> list[str]:
        async with client(srv) as c:
            await c.write_event(Synthesize(text="Still serving.").event())
            types = []
            while (event := await c.read_event()) is not None:
                types.append(event.type)
                if AudioStop.is_type(event.type):
                    break
            return types

    assert run(again())[-1] == "audio-stop"


def _wire(text: str) -> bytes:
    """A synthesize event as Wyoming frames it: a JSON header line, then the data block."""
    import json

    data = json.dumps({"text": text}).encode()
    return json.dumps({"type": "synthesize", "data_length": len(data)}).encode() + b"\n" + data


def test_connections_past_max_connections_are_refused_with_overloaded(serve) -> None:
    srv = serve(max_connections=2)

    async def go() -> tuple[list[str], list[Event]]:
        a, b = client(srv), client(srv)
        await a.connect()
        await b.connect()
        try:
            for c in (a, b):  # both are being served
                await c.write_event(Describe().event())
            kinds = [(await c.read_event()).type for c in (a, b)]  # type: ignore[union-attr]
            async with client(srv) as third:
                await third.write_event(Describe().event())
                refused = await read_all(third)
        finally:
            await a.disconnect()
            await b.disconnect()
        return kinds, refused

    kinds, refused = run(go())
    assert all(Info.is_type(k) for k in kinds), kinds
    assert error_codes(refused) == ["overloaded"], [e.type for e in refused]
