"""Limits, access control and fault isolation on a live server: each case gets its own server over a shared engine."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from audio_checks import assert_same_audio
from protocol import Limits
from streaming.engine import Engine
from tests.server_fixtures import (  # noqa: F401 - engine is a fixture
    PARAMS,
    RawClient,
    ServerThread,
    engine,
    metric_value,
    run,
    start_server,
)

LONG_TEXT = " ".join(f"Sentence number {n} is here." for n in range(40))
LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # about a minute of CPU unless cancelled
KEYS = ("k-alpha-7f3c9e", "k-bravo-91d2aa")


@pytest.fixture
def servers(engine: Engine) -> Iterator[list[ServerThread]]:
    """Servers a test starts with `servers.append(start_server(...))`; all stopped afterwards."""
    started: list[ServerThread] = []
    yield started
    for srv in started:
        srv.stop()


def serve(servers: list[ServerThread], engine: Engine, **overrides: Any) -> ServerThread:
    srv = start_server(engine, **overrides)
    servers.append(srv)
    return srv


def http(srv: ServerThread, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET over plain HTTP with headers: (status, response headers, body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


async def refused(url: str, **kw: Any) -> InvalidStatus:
    """The InvalidStatus a handshake fails with (the test fails if it succeeds)."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kw):
            pass
    return info.value


def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll `predicate` until true; return the seconds it took; fail after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)  # polling interval, bounded by the deadline
    return time.monotonic() - start


# --- frame size, flood, idle -----------------------------------------------------------


def test_oversize_frame_closes_1009(servers: list[ServerThread], engine: Engine) -> None:
    """With the default 64 KiB limit, a 70 KiB frame gets frame_too_large and close 1009."""
    srv = serve(servers, engine, limits=Limits())

    async def go() -> tuple[tuple[int | None, str], list[dict[str, Any]]]:
        conn = await RawClient.connect(srv.url)
        await conn.ws.send(msgpack.packb({"type": "speak", "id": "x", "text": "a" * 70_000}))
        return await conn.closed(), conn.general_errors + [e for r in conn.results.values() for e in r.errors]

    (code, reason), errors = run(go())
    assert (code, reason) == (1009, "frame_too_large") and [e["code"] for e in errors] == ["frame_too_large"]


def test_flood_is_rate_limited_then_closed_1008(servers: list[ServerThread], engine: Engine) -> None:
    """A flood gets rate_limited errors, then close 1008; a neighbour's request finishes untouched."""
    srv = serve(servers, engine, max_messages_per_s=20.0, message_burst=10, rate_limit_strikes=5)

    async def go() -> tuple[RawClient, tuple[int | None, str], dict[str, Any]]:
        neighbour = await RawClient.connect(srv.url)
        await neighbour.speak("n1", "Hello there.")
        flood = await RawClient.connect(srv.url)
        for n in range(200):
            await flood.send({"type": "cancel", "id": f"ghost{n}"})
        closed = await flood.closed()
        done = (await neighbour.until_done("n1"))["n1"].done
        await neighbour.close()
        return flood, closed, done  # type: ignore[return-value]

    flood, closed, done = run(go())
    codes = [e["code"] for r in flood.results.values() for e in r.errors] + [e["code"] for e in flood.general_errors]
    assert closed == (1008, "rate_limited")
    assert codes.count("unknown_id") <= 12 and codes.count("rate_limited") == 6, codes  # burst, then strikes + 1
    assert done["reason"] == "end"


def test_idle_connection_closed_1008(servers: list[ServerThread], engine: Engine) -> None:
    """A connection with no request and no message for idle_timeout gets idle_timeout and close 1008."""
    srv = serve(servers, engine, idle_timeout=0.5, probe_interval=0.05)

    async def go() -> tuple[float, tuple[int | None, str], list[dict[str, Any]]]:
        conn = await RawClient.connect(srv.url)
        t0 = time.monotonic()
        closed = await conn.closed()
        return time.monotonic() - t0, closed, conn.general_errors

    waited, closed, errors = run(go())
    assert closed == (1008, "idle_timeout") and [e["code"] for e in errors] == ["idle_timeout"]
    assert 0.45 <= waited < 5.0


def test_busy_connection_is_not_idle(servers: list[ServerThread], engine: Engine) -> None:
    """A connection that sends nothing while its request streams is not closed for idleness."""
    srv = serve(servers, engine, idle_timeout=0.3, probe_interval=0.05)

    async def go() -> dict[str, Any]:
        conn = await RawClient.connect(srv.url)
        await conn.speak("r", "Hello there. How are you today? The quick brown fox jumps.")
        done = (await conn.until_done("r"))["r"].done
        await conn.close()
        return done  # type: ignore[return-value]

    assert run(go())["reason"] == "end"


def test_vanished_peer_dropped_by_keepalive(servers: list[ServerThread], engine: Engine) -> None:
    """A peer that stops answering pings (and reading) is closed within ping_interval + ping_timeout."""
    srv = serve(servers, engine, ping_interval=0.3, ping_timeout=0.5, probe_interval=0.05)

    async def go() -> None:
        conn = await RawClient.connect(srv.url)
        srv.wait_metric("bark_connections", lambda v: v == 1)
        conn.ws.transport.pause_reading()  # no more pongs: as good as gone
        await asyncio.to_thread(srv.wait_metric, "bark_connections", lambda v: v == 0, 5.0)
        conn.ws.transport.abort()

    run(go())


# --- handshake: capacity, origin, keys --------------------------------------------------


def test_too_many_connections_503_retry_after(servers: list[ServerThread], engine: Engine) -> None:
    """Beyond max_connections the handshake gets 503 with Retry-After; a freed place admits again."""
    srv = serve(servers, engine, max_connections=2)

    async def go() -> InvalidStatus:
        first, second = await RawClient.connect(srv.url), await RawClient.connect(srv.url)
        exc = await refused(srv.url)
        await first.close()
        await asyncio.to_thread(srv.wait_metric, "bark_connections", lambda v: v == 1)
        third = await RawClient.connect(srv.url)
        await second.close()
        await third.close()
        return exc

    exc = run(go())
    assert exc.response.status_code == 503 and int(exc.response.headers["Retry-After"]) > 0
    assert srv.metric("bark_handshakes_refused_total", 'reason="max_connections"') == 1


def test_bad_origin_403(servers: list[ServerThread], engine: Engine) -> None:
    """An Origin outside the allow-list gets 403; a listed Origin or none (not a browser) connects."""
    srv = serve(servers, engine, allowed_origins=("https://app.example",))

    async def go() -> InvalidStatus:
        exc = await refused(srv.url, origin="https://evil.example")
        for origin in ("https://app.example", None):
            client = await RawClient.connect_with(srv.url, origin=origin)
            await client.close()
        return exc

    assert run(go()).response.status_code == 403


def test_api_keys_401_and_never_logged(servers: list[ServerThread], engine: Engine,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Missing or wrong keys get 401 (header, X-API-Key, query token); right ones connect; no key is logged."""
    caplog.set_level(logging.DEBUG, logger="websockets")
    caplog.set_level(logging.DEBUG, logger="server")
    srv = serve(servers, engine, api_keys=KEYS)
    url = srv.url

    async def go() -> list[int]:
        bad = [(url, {}), (url, {"Authorization": "Bearer k-wrong"}), (url, {"X-API-Key": KEYS[0] + "x"}),
               (url + "?token=" + KEYS[1][:-1], {})]
        statuses = [(await refused(u, additional_headers=h)).response.status_code for u, h in bad]
        for kw in ({"additional_headers": {"Authorization": f"Bearer {KEYS[0]}"}},
                   {"additional_headers": {"X-API-Key": KEYS[1]}}, {}):
            target = url if kw else f"{url}?token={KEYS[0]}"
            client = await RawClient.connect_with(target, **kw)
            await client.close()
        return statuses

    assert run(go()) == [401, 401, 401, 401]
    assert http(srv, "/healthz")[0] == 200
    assert http(srv, "/metrics")[0] == 401
    assert http(srv, "/metrics", {"Authorization": f"Bearer {KEYS[1]}"})[0] == 200
    metrics = http(srv, "/metrics", {"X-API-Key": KEYS[0]})[2]
    assert metric_value(metrics, "bark_handshakes_refused_total", 'reason="auth"') == 5  # 4 upgrades + /metrics
    logged = [r.getMessage() for r in caplog.records if r.name.startswith(("server", "websockets.server"))]
    assert any("GET /v1/stream" in line for line in logged)  # the request lines were logged...
    assert not [line for line in logged if any(k in line or k[:-1] in line for k in KEYS)]  # ...without keys


# --- engine faults and overload -----------------------------------------------------------


def test_fault_in_one_request_ends_only_that_request(servers: list[ServerThread], engine: Engine,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in one request's coarse step ends it with internal; its neighbours finish intact."""
    from streaming.stages.coarse import CoarseStage

    real = CoarseStage._accept_row
    victim_seed = 424242

    def faulty(self: Any, seg: Any, token: int) -> Any:
        if seg.generator.seed == victim_seed:
            raise RuntimeError("injected fault")
        return real(self, seg, token)

    srv = serve(servers, engine)
    text = "Hello there."

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        clean = await RawClient.connect(srv.url)
        await clean.speak("want", text)
        want = (await clean.until_done("want"))["want"]
        monkeypatch.setattr(CoarseStage, "_accept_row", faulty)
        conn, other = await RawClient.connect(srv.url), await RawClient.connect(srv.url)
        await conn.speak("bad", text, params={**PARAMS, "seed": victim_seed})
        await conn.speak("good", text)
        await other.speak("good", text)
        results = {"same": await conn.until_done("bad", "good"), "other": await other.until_done("good")}
        for c in (clean, conn, other):
            await c.close()
        return {"want": want}, results

    ref, results = run(go())
    bad = results["same"]["bad"]
    assert bad.order[-2:] == ["error", "done"] and bad.errors[0]["code"] == "internal"
    assert bad.done["reason"] == "error"  # type: ignore[index]
    for good in (results["same"]["good"], results["other"]["good"]):
        assert good.done["reason"] == "end"  # type: ignore[index]
        good.check_contiguous()
        assert_same_audio(good.samples(), ref["want"].samples(), s16=True)  # decoded in a batch
    assert engine.healthy


def test_engine_death_closes_1011_and_healthz_503() -> None:
    """When the engine thread dies, /healthz turns 503 and open connections close with 1011."""
    from tests.server_fixtures import make_engine

    doomed = make_engine(max_streams=2, max_queue=2)
    srv = start_server(doomed)
    try:
        async def go() -> tuple[tuple[int | None, str], RawClient]:
            conn = await RawClient.connect(srv.url)
            await conn.send({"type": "start", "id": "open", "params": {**PARAMS, "max_semantic_tokens": 768}})
            await conn.send({"type": "text", "id": "open", "text": "Hello there."})
            await conn.send({"type": "flush", "id": "open"})  # a request holds a slot while it has work
            await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 1)

            def boom(*a: Any, **kw: Any) -> Any:
                raise RuntimeError("injected engine failure")
            doomed.scheduler.plan = boom  # type: ignore[method-assign]
            return await conn.closed(), conn

        (code, reason), conn = run(go())
        assert code == 1011 and reason == "internal"
        assert conn.results["open"].errors[0]["code"] == "internal"
        assert http(srv, "/healthz")[0] == 503
        assert srv.server is not None and srv.server.engine_failed.is_set()
    finally:
        srv.stop()
        doomed.stop()


def test_overload_refuses_with_retry_after_and_admitted_stream_keeps_going() -> None:
    """With one slot and no queue, a second request gets overloaded + retry_after_ms; the first finishes."""
    from tests.server_fixtures import make_engine

    small = make_engine(max_streams=1, max_queue=0)
    srv = start_server(small, max_streams=1, max_queue=0)
    try:
        async def go() -> tuple[dict[str, Any], Any]:
            holder = await RawClient.connect(srv.url)
            await holder.send({"type": "start", "id": "hold", "params": {**PARAMS, "max_semantic_tokens": 160}})
            await holder.send({"type": "text", "id": "hold", "text": "Hello there."})
            await holder.send({"type": "flush", "id": "hold"})  # its sentence keeps the only slot busy for a while
            await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 1)
            other = await RawClient.connect(srv.url)
            await other.speak("late", "Hello there.")
            error = await other.next_error()
            await holder.send({"type": "end", "id": "hold"})
            result = (await holder.until_done("hold"))["hold"]
            await other.close()
            await holder.close()
            return error, result

        error, result = run(go())
        assert (error["code"], error["id"]) == ("overloaded", "late") and error["retry_after_ms"] > 0
        assert result.done["reason"] == "end" and result.done["samples"] > 0
        result.check_contiguous()
    finally:
        srv.stop()
        small.stop()


# --- stalled readers and vanished clients ----------------------------------------------------


def test_stalled_reader_pauses_then_slow_consumer(servers: list[ServerThread], engine: Engine) -> None:
    """A client that stops reading: its streams pause with bounded audio owed, then slow_consumer and 1008."""
    max_buffer_s = 1.0
    srv = serve(servers, engine, max_buffer_s=max_buffer_s, slow_consumer_timeout=2.0, probe_interval=0.05,
                close_timeout=30.0)

    async def go() -> tuple[float, RawClient, tuple[int | None, str]]:
        conn = await RawClient.connect(srv.url)
        await conn.speak("a", LONG_TEXT, params=LONG_PARAMS)
        await conn.speak("b", LONG_TEXT, params=LONG_PARAMS)  # the test reads nothing from here on
        await asyncio.to_thread(srv.wait_metric, "bark_paused_streams", lambda v: v == 2, 60.0)
        owed = srv.metric("bark_unacknowledged_audio_seconds")
        await asyncio.to_thread(wait_until, lambda: srv.metric("bark_errors_total", 'code="slow_consumer"') == 1,
                                10.0, "slow_consumer")
        await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 0, 5.0)
        return owed, conn, await conn.closed()

    owed, conn, closed = run(go())
    assert 0 < owed <= max_buffer_s + 2 * 0.86  # the bound: max_buffer_s plus one chunk per stream
    assert srv.metric("bark_errors_total", 'code="slow_consumer"') == 1
    assert closed == (1008, "slow_consumer")
    assert [e["code"] for e in conn.general_errors] == ["slow_consumer"]
    for req_id in ("a", "b"):  # what did arrive is intact, in order
        audio = conn.results[req_id].audio
        assert audio and [m["seq"] for m in audio] == list(range(len(audio)))


def test_abrupt_disconnect_frees_slots_within_1s(servers: list[ServerThread], engine: Engine) -> None:
    """Dropping the TCP connection mid-stream frees every engine slot within one second (seen in /metrics)."""
    srv = serve(servers, engine)

    async def go() -> None:
        conn = await RawClient.connect(srv.url)
        for req_id in ("a", "b", "c"):
            await conn.speak(req_id, LONG_TEXT, params=LONG_PARAMS)
        while not all(conn.results.get(i) and conn.results[i].audio for i in ("a", "b", "c")):
            await conn.next_message()
        assert srv.metric("bark_active_streams") == 3
        conn.ws.transport.abort()

    run(go())
    took = wait_until(lambda: srv.metric("bark_active_streams") == 0 and srv.metric("bark_connections") == 0,
                      1.0, "slots freed after an abrupt disconnect")
    assert took < 1.0
