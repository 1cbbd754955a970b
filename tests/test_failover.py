"""Replicas without a balancer: /healthz capacity and reasons, --refuse-when-full, the failover client
(next URL on 503 or refusal, a request retried only while it has delivered no audio), and TLS on the server."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from client.api import AudioChunk, ConnectionFailed, collect
from client.failover import FailoverClient, RetryPolicy, RetryUnsafe
from tests.server_fixtures import PARAMS, RawClient, ServerThread, engine, run, start_server  # noqa: F401

LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # far longer than any test waits for
FAST = RetryPolicy(connect_attempts=4, request_retries=2, backoff_s=0.05, max_backoff_s=0.2)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pair(engine) -> Iterator[tuple[ServerThread, ServerThread]]:  # noqa: F811 - the module engine
    """Two servers over the module's engine: replicas as far as a client can tell."""
    a, b = start_server(engine), start_server(engine)
    yield a, b
    a.stop()
    b.stop()


def _drain(srv: ServerThread, timeout: float) -> None:
    """Start srv's drain (as SIGTERM does) without waiting for it."""
    assert srv.loop is not None and srv.server is not None
    asyncio.run_coroutine_threadsafe(srv.server.drain(timeout), srv.loop)


def _health(srv: ServerThread) -> tuple[int, dict]:
    status, _, body = srv.http("/healthz")
    return status, json.loads(body)


def _wait_draining(srv: ServerThread, timeout: float = 10.0) -> None:
    """Poll /healthz until it says draining (the drain has begun on the server's loop)."""
    import time

    deadline = time.monotonic() + timeout
    while _health(srv)[1]["reason"] != "draining":
        assert time.monotonic() < deadline, "the drain did not begin"
        time.sleep(0.02)  # polling interval, bounded by the deadline


def test_healthz_reports_capacity_and_full_with_refuse_when_full(engine) -> None:  # noqa: F811
    """/healthz: 200 with the capacity fields while a slot is free; with --refuse-when-full and every slot
    held, 503 {"reason": "full"} and upgrades refused with 503 + Retry-After; 200 again once a slot frees."""
    srv = start_server(engine, max_streams=1, refuse_when_full=True)
    try:
        status, body = _health(srv)
        assert status == 200 and body["reason"] is None
        assert {"active_streams", "queued_streams", "max_streams", "connections", "max_connections"} <= set(body)
        assert body["max_streams"] == 1

        async def go() -> tuple[int, dict, int, str | None]:
            filler = await RawClient.connect(srv.url)
            await filler.speak("long", "A long one that holds the only slot.", params=LONG_PARAMS)
            while not filler.results.get("long") or not filler.results["long"].audio:
                await filler.next_message()
            status, body = await asyncio.to_thread(_health, srv)
            with pytest.raises(InvalidStatus) as refused:
                await RawClient.connect(srv.url)
            await filler.close()  # cancels its stream: the slot frees
            return status, body, refused.value.response.status_code, refused.value.response.headers.get("Retry-After")

        status, body, refused_status, retry_after = run(go())
        assert (status, body["status"], body["reason"]) == (503, "unavailable", "full")
        assert body["active_streams"] == 1
        assert refused_status == 503 and retry_after is not None and int(retry_after) > 0
        assert srv.metric("bark_handshakes_refused_total", 'reason="full"') == 1
        srv.wait_metric("bark_active_streams", lambda v: v == 0)
        assert _health(srv)[0] == 200
    finally:
        srv.stop()


def test_without_refuse_when_full_a_full_engine_still_accepts(engine) -> None:  # noqa: F811
    """Off by default: every slot held, the upgrade is still accepted (the request waits in the queue)."""
    srv = start_server(engine, max_streams=1)
    try:
        async def go() -> int:
            filler = await RawClient.connect(srv.url)
            await filler.speak("long", "A long one that holds the only slot.", params=LONG_PARAMS)
            while not filler.results.get("long") or not filler.results["long"].audio:
                await filler.next_message()
            status = (await asyncio.to_thread(_health, srv))[0]
            late = await RawClient.connect(srv.url)  # accepted
            await late.close()
            await filler.close()
            return status

        assert run(go()) == 200  # not full: the queue has room
    finally:
        srv.stop()


def test_failover_client_skips_a_refused_and_a_draining_url(pair: tuple[ServerThread, ServerThread]) -> None:
    """urls [closed port, draining A, B]: the client ends on B and the request is done there."""
    a, b = pair
    _drain(a, 30.0)
    dead = f"ws://127.0.0.1:{_closed_port()}/v1/stream"

    async def go() -> tuple[str, str]:
        async with await FailoverClient.connect([dead, a.url, b.url], policy=FAST) as client:
            _, done = await collect(client.speak("Hello there.", params=PARAMS))
            return client.url, done.reason

    assert run(go()) == (b.url, "end")
    assert a.metric("bark_handshakes_refused_total", 'reason="unavailable"') >= 1
    assert b.metric("bark_requests_total") == 1 and a.metric("bark_requests_total") == 0


def test_failover_client_gives_up_after_its_attempts_naming_the_reason(pair: tuple[ServerThread, ServerThread]) -> None:
    """Every URL answering 503: the client backs off, tries again, then fails with one line naming the 503."""
    a, b = pair
    _drain(a, 30.0)
    _drain(b, 30.0)

    async def go() -> None:
        await FailoverClient.connect([a.url, b.url], policy=FAST)

    with pytest.raises(ConnectionFailed, match=r"after 4 attempt\(s\) over 2 URL\(s\).*HTTP 503"):
        run(go())


def test_request_refused_by_a_draining_server_is_sent_again_elsewhere(pair: tuple[ServerThread, ServerThread]) -> None:
    """Connected to A, A starts draining: the next request gets `shutting_down`, which the client retries on
    B (nothing had been delivered), and it ends with `done` there."""
    a, b = pair

    async def go() -> tuple[str, str, int]:
        filler = await RawClient.connect(a.url)  # a request in flight keeps A's drain waiting
        await filler.speak("long", "A long one.", params=LONG_PARAMS)
        async with await FailoverClient.connect([a.url, b.url], policy=FAST) as client:
            assert client.url == a.url
            await asyncio.to_thread(_drain, a, 30.0)
            await asyncio.to_thread(_wait_draining, a)
            _, done = await collect(client.speak("Hello there.", params=PARAMS))
            result = client.url, done.reason, client.retried_requests
        await filler.close()
        return result

    assert run(go()) == (b.url, "end", 1)
    assert a.metric("bark_requests_total") == 1 and b.metric("bark_requests_total") == 1  # A: the filler only


def test_request_cut_by_1012_before_audio_is_replayed_elsewhere(pair: tuple[ServerThread, ServerThread]) -> None:
    """A stream_text request whose text has not come yet when A's drain deadline closes it with 1012 is sent
    again on B with the pieces read so far, then the rest: it ends with `done` on B."""
    a, b = pair

    async def go() -> tuple[str, str, int, int]:
        release = asyncio.Event()

        async def pieces() -> AsyncIterator[str]:
            yield "Hello "
            await release.wait()  # held back until the request has moved to B
            yield "there."

        async with await FailoverClient.connect([a.url, b.url], policy=FAST) as client:
            events = client.stream_text(pieces(), params=PARAMS)
            first = asyncio.ensure_future(events.__anext__())
            while not client.in_flight:
                await asyncio.sleep(0.01)  # until `start` is sent
            await asyncio.to_thread(_drain, a, 0.5)  # no end of text: the request is cut by 1012 at 0.5 s
            while client.retried_requests == 0:
                await asyncio.sleep(0.01)  # bounded by run()'s timeout
            release.set()
            audio = [await first]
            async for event in events:
                audio.append(event)
            chunks = [e for e in audio if isinstance(e, AudioChunk)]
            return client.url, audio[-1].reason, client.retried_requests, len(chunks)

    url, reason, retried, chunks = run(go())
    assert (url, reason, retried) == (b.url, "end", 1) and chunks > 0


def test_request_cut_after_audio_is_reported_not_restarted(pair: tuple[ServerThread, ServerThread]) -> None:
    """Audio already delivered when A closes with 1012: RetryUnsafe says how much arrived, and B never sees
    the request (the beginning is not played twice)."""
    a, b = pair

    async def go() -> RetryUnsafe:
        async with await FailoverClient.connect([a.url, b.url], policy=FAST) as client:
            with pytest.raises(RetryUnsafe) as info:
                async for event in client.speak("A long one.", params=LONG_PARAMS):
                    if isinstance(event, AudioChunk) and event.seq == 0:
                        await asyncio.to_thread(_drain, a, 0.2)
            return info.value

    exc = run(go())
    assert exc.code == 1012 and exc.samples > 0 and "not retried" in str(exc)
    assert b.metric("bark_requests_total") == 0


def test_tls_on_the_server_wss_and_https(engine, tmp_path: Path) -> None:  # noqa: F811
    """--ssl-certfile/--ssl-keyfile: wss:// speaks the protocol, /healthz answers over https, the HTTP API
    too; a client that does not trust the certificate is refused by its own TLS check."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    srv = start_server(engine, ssl_certfile=tmp_path / "cert.pem", ssl_keyfile=tmp_path / "key.pem", http_port=0)
    try:
        url = f"wss://127.0.0.1:{srv.port}/v1/stream"

        async def go() -> str:
            async with await FailoverClient.connect([url], ssl=trust, policy=FAST) as client:
                _, done = await collect(client.speak("Hello there.", params=PARAMS))
            with pytest.raises(ConnectionFailed):
                await FailoverClient.connect([url], policy=FAST)  # the system's trust store: not this CA
            return done.reason

        assert run(go()) == "end"
        with urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/healthz", context=trust, timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["reason"] is None
        api = srv.server.http_port if srv.server is not None else None
        with urllib.request.urlopen(f"https://127.0.0.1:{api}/healthz", context=trust, timeout=10) as resp:
            assert resp.status == 200
    finally:
        srv.stop()


def test_tls_flags_checked_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key without a certificate, a missing file, or a file that is not PEM: exit 2 naming the flag."""
    import logging

    from server.__main__ import main

    websockets_log = logging.getLogger("websockets")
    level = websockets_log.level  # main() quiets it; later tests read its debug records
    try:
        (tmp_path / "junk.pem").write_text("not a certificate\n")
        assert main(["--ssl-keyfile", str(tmp_path / "junk.pem")]) == 2
        assert "ssl_keyfile: given without ssl_certfile" in capsys.readouterr().err
        assert main(["--ssl-certfile", str(tmp_path / "missing.pem")]) == 2
        assert "is not a file" in capsys.readouterr().err
        assert main(["--ssl-certfile", str(tmp_path / "junk.pem")]) == 2
        assert "--ssl-certfile/--ssl-keyfile: cannot load" in capsys.readouterr().err
    finally:
        websockets_log.setLevel(level)


