"""Fair sharing and hardening: each finding from probing the server as a careless or hostile client,
each checked beside a healthy stream on another connection whose audio is unaffected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client.api import BarkStreamClient, Done, ServerError
from server_fixtures import PARAMS, make_engine, run, start_server
from streaming.errors import ConfigError, ErrorCode


def healthy(url: str, headers: dict[str, str] | None = None):
    """A coroutine: one normal request on its own connection; returns its Done."""
    async def go() -> Done:
        async with await BarkStreamClient.connect(url, additional_headers=headers) as client:
            return [e async for e in client.speak("A healthy neighbour.", params=PARAMS) if isinstance(e, Done)][0]
    return go()


def beside(url: str, hostile, headers: dict[str, str] | None = None) -> Done:
    """Run the blocking `hostile()` in a thread while a healthy request streams on its own connection;
    returns the healthy request's Done (its events, not its timing, are what the tests check)."""
    async def go() -> Done:
        neighbour = asyncio.create_task(healthy(url, headers))
        await asyncio.to_thread(hostile)
        return await neighbour

    return run(go())


def test_engine_bad_field_reaches_client_as_bad_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the engine refuses for its own input ends with the typed code bad_field (not internal);
    the neighbour ends normally."""
    from streaming.stages.coarse import CoarseStage

    real = CoarseStage._accept_row

    def picky(self: Any, seg: Any, token: int) -> Any:
        if seg.generator.seed == 4242:
            raise ConfigError("seed: 4242 is refused by this test", field="seed")
        return real(self, seg, token)

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine)
    monkeypatch.setattr(CoarseStage, "_accept_row", picky)
    try:
        async def go() -> tuple[ServerError, Done]:
            async with await BarkStreamClient.connect(srv.url) as client:
                with pytest.raises(ServerError) as info:
                    async for _ in client.speak("Refuse me.", params={**PARAMS, "seed": 4242}):
                        pass
                return info.value, await healthy(srv.url)

        err, done = run(go())
        assert err.code == ErrorCode.BAD_FIELD and "seed: 4242" in str(err)
        assert done.reason == "end"
    finally:
        srv.stop()
        engine.stop()


def test_refused_request_sends_no_stray_cancel() -> None:
    """A request refused with overloaded is over: the client library sends no cancel for it (the server would
    answer unknown_id), and the connection goes on serving."""
    engine = make_engine(max_streams=1, max_queue=0)
    srv = start_server(engine, max_streams=1, max_queue=0)
    try:
        async def go() -> tuple[str, str]:
            async with await BarkStreamClient.connect(srv.url) as holder, \
                    await BarkStreamClient.connect(srv.url) as client:
                hold = holder.stream_text(_never_ending(), params={**PARAMS, "max_semantic_tokens": 768})
                first = await hold.__anext__()  # the holder's first audio: it owns the only slot (for a minute)
                with pytest.raises(ServerError) as info:
                    async for _ in client.speak("No room for me.", params=PARAMS):
                        pass
                await hold.aclose()  # cancels the holder
                await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 0)
                after = [e async for e in client.speak("Room now.", params=PARAMS) if isinstance(e, Done)][0]
                return info.value.code, after.reason, type(first).__name__

        code, reason, _ = run(go())
        assert (code, reason) == ("overloaded", "end")
        assert srv.metric("bark_errors_total", 'code="unknown_id"') == 0
    finally:
        srv.stop()
        engine.stop()


async def _never_ending():
    yield "Hold this slot with a sentence that comes first.\n"  # a line: the client flushes it
    await asyncio.sleep(3600)
    yield "never"


# --- HTTP edge, keys and logs ------------------------------------------------------------------

def _raw_http(port: int, request: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n")
KEY = "k-hardening-5e1f"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def keyed():
    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine, api_keys=(KEY,), public_metrics=True)
    yield srv
    srv.stop()
    engine.stop()


def test_malformed_request_target_is_400(keyed, caplog: pytest.LogCaptureFixture) -> None:
    """GET //[ (not a URL) gets 400 and no ERROR or traceback is logged; a healthy stream is unaffected."""
    import logging

    caplog.set_level(logging.DEBUG)
    replies: list[bytes] = []
    done = beside(keyed.url, lambda: replies.append(_raw_http(keyed.port, b"GET //[ HTTP/1.1\r\nHost: x\r\n\r\n")),
                  AUTH)
    assert done.reason == "end" and done.samples == run(healthy(keyed.url, AUTH)).samples
    reply = replies[0]
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert keyed.metric("bark_handshakes_refused_total", 'reason="bad_request"') == 1


def test_keys_never_reach_the_log_however_spelled(keyed, caplog: pytest.LogCaptureFixture) -> None:
    """A percent-encoded ?%74oken=KEY (accepted) and a malformed Authorization header (a parse traceback) are
    both logged at debug without the key."""
    import logging

    caplog.set_level(logging.DEBUG)
    replies: list[bytes] = []

    def hostile() -> None:
        replies.append(_raw_http(keyed.port, f"GET /v1/stream?%74oken={KEY} HTTP/1.1\r\nHost: x\r\n".encode()
                                 + UPGRADE + b"\r\n"))
        _raw_http(keyed.port, b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\xff\x01zz\r\n" + UPGRADE + b"\r\n")

    assert beside(keyed.url, hostile, AUTH).reason == "end"
    assert replies[0].startswith(b"HTTP/1.1 101"), replies[0][:80]
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records
                     if r.name.startswith(("server", "websockets.server")))  # the neighbour's client logs its own
    assert "%74oken=[redacted]" in text  # the request line was logged...
    assert KEY not in text  # ...and neither spelling let the key through


def test_client_strings_cannot_forge_log_lines(keyed, caplog: pytest.LogCaptureFixture) -> None:
    """An unknown params key holding a newline is logged escaped, on one line."""
    import logging

    from server_fixtures import RawClient

    caplog.set_level(logging.INFO)

    async def go() -> tuple[dict[str, Any], Done]:
        neighbour = asyncio.create_task(healthy(keyed.url, AUTH))
        conn = await RawClient.connect_with(keyed.url, additional_headers=AUTH)
        await conn.send({"type": "speak", "id": "r1", "text": "Hi.", "params": {"x\nFAKE ERROR line": 1}})
        err = await conn.next_error()
        await conn.close()
        return err, await neighbour

    err, done = run(go())
    assert err["code"] == "unknown_field" and done.reason == "end"
    lines = [line for r in caplog.records if r.name.startswith("server") for line in r.getMessage().splitlines()]
    assert not [line for line in lines if line.startswith("FAKE")]
    assert any("\\nFAKE ERROR line" in line for line in lines)


def test_refused_auth_is_counted_not_logged_each_time(keyed, caplog: pytest.LogCaptureFixture) -> None:
    """20 refused handshakes: all counted in bark_handshakes_refused_total, one WARNING line in the log."""
    import logging

    caplog.set_level(logging.WARNING)
    replies: list[bytes] = []

    def hostile() -> None:
        for _ in range(20):
            replies.append(_raw_http(keyed.port, b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n" + UPGRADE + b"\r\n"))

    assert beside(keyed.url, hostile, AUTH).reason == "end"
    assert all(r.startswith(b"HTTP/1.1 401") for r in replies)
    assert keyed.metric("bark_handshakes_refused_total", 'reason="auth"') == 20
    warnings = [r for r in caplog.records if "missing or unknown API key" in r.getMessage()]
    assert len(warnings) == 1


# --- health and counters -----------------------------------------------------------------------

def test_healthz_answers_during_drain_and_upgrades_get_503() -> None:
    """While a drain waits for a request in flight, /healthz answers 503 {"reason": "draining"} and a new
    upgrade gets 503; the request in flight still ends normally."""
    import json

    from server_fixtures import RawClient

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine)
    try:
        async def go() -> tuple[int, dict[str, Any], int, str]:
            conn = await RawClient.connect(srv.url)
            await conn.send({"type": "start", "id": "long", "params": PARAMS})
            await conn.send({"type": "text", "id": "long", "text": "Still talking."})
            await conn.send({"type": "flush", "id": "long"})  # in flight, not ended: the drain waits for it
            await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 1)
            assert srv.loop is not None and srv.server is not None
            drain = asyncio.run_coroutine_threadsafe(srv.server.drain(30.0), srv.loop)
            status, _, body = await asyncio.to_thread(srv.http, "/healthz")
            upgrade = await asyncio.to_thread(_raw_http, srv.port, b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n"
                                              + UPGRADE + b"\r\n")
            await conn.send({"type": "end", "id": "long"})
            reason = (await conn.until_done("long"))["long"].done["reason"]
            await asyncio.wrap_future(drain)
            return status, json.loads(body), int(upgrade.split()[1]), reason

        status, body, upgrade, reason = run(go())
        assert status == 503 and body["status"] == "unavailable" and body["reason"] == "draining"
        assert upgrade == 503 and reason == "end"
    finally:
        srv.stop()
        engine.stop()


def test_every_started_request_ends_with_one_reason() -> None:
    """Requests cut off by an abrupt disconnect are counted as finished with reason "disconnected":
    after mixed traffic, requests_total equals the sum of finished reasons."""
    from server_fixtures import RawClient

    engine = make_engine(max_streams=4, max_queue=8)
    srv = start_server(engine)
    try:
        async def go() -> None:
            done = await RawClient.connect(srv.url)
            await done.speak("a", "Finished normally.")
            await done.until_done("a")
            cancelled = await RawClient.connect(srv.url)
            await cancelled.speak("b", "Cancelled by its client.")
            await cancelled.send({"type": "cancel", "id": "b"})
            await cancelled.until_done("b")
            for i in range(3):  # abrupt disconnects (TCP reset) with requests in flight
                gone = await RawClient.connect(srv.url)
                await gone.send({"type": "start", "id": f"g{i}", "params": PARAMS})
                await gone.send({"type": "text", "id": f"g{i}", "text": "Never heard."})
                await asyncio.to_thread(srv.wait_metric, "bark_requests_total", lambda v, n=3 + i: v >= n)
                gone.ws.transport.abort()
            await done.close()
            await cancelled.close()

        run(go())
        srv.wait_metric("bark_connections", lambda v: v == 0)
        total = srv.metric("bark_requests_total")
        reasons = {r: srv.metric("bark_requests_finished_total", f'reason="{r}"')
                   for r in ("end", "cancelled", "error", "disconnected")}
        assert total == 5 and sum(reasons.values()) == total, reasons
        assert reasons["disconnected"] == 3
    finally:
        srv.stop()
        engine.stop()


# --- voices ------------------------------------------------------------------------------------

def test_ready_lists_only_voices_that_load(tmp_path) -> None:
    """Offline with no voices directory nothing is offered; with one, exactly its voices."""
    import shutil

    from server.voices import VoiceCatalog
    from streaming.voices import bundled_voices_dir

    assert VoiceCatalog(None, offline=True).discover() == []
    (tmp_path / "v2").mkdir()
    shutil.copy(bundled_voices_dir() / "v2" / "en_speaker_6.npz", tmp_path / "v2" / "en_speaker_6.npz")
    shutil.copy(bundled_voices_dir() / "announcer.npz", tmp_path / "announcer.npz")
    assert sorted(VoiceCatalog(tmp_path, offline=True).discover()) == ["announcer", "v2/en_speaker_6"]


def test_unreachable_hub_is_found_at_start_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """Not offline, no hub: discovery gives up after the probe timeout, warns once, offers no hub presets."""
    import logging

    from server.voices import VoiceCatalog

    caplog.set_level(logging.INFO, logger="server.voices")
    catalog = VoiceCatalog(None, offline=False, probe_timeout=0.5)
    assert catalog.discover() == [] and catalog.hub is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "server.voices"]
    assert len(warnings) == 1 and "did not answer" in warnings[0].getMessage()


def test_voice_failures_are_cached_and_client_errors_name_no_path(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A voices-dir preset whose file is corrupt: the client gets unknown_voice without any server path (the log
    has it), the second request is answered from the cache without touching the file; a voice the server
    does not offer is refused at once; a healthy neighbour is unaffected."""
    import logging

    import server.voices as voices_mod
    from server_fixtures import RawClient

    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    calls: list[str] = []
    real = voices_mod.load_voice

    def counting(name: str, **kw: Any) -> Any:
        calls.append(name)
        return real(name, **kw)

    monkeypatch.setattr(voices_mod, "load_voice", counting)
    caplog.set_level(logging.WARNING, logger="server.voices")
    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine, voices_dir=tmp_path)
    try:
        async def go() -> tuple[list[dict[str, Any]], list[str], Done]:
            conn = await RawClient.connect(srv.url)
            errors = []
            for i, voice in enumerate(["broken", "broken", "v2/en_speaker_1"]):
                await conn.speak(f"r{i}", "Hello.", voice=voice)
                errors.append(await conn.next_error())
            await conn.close()
            return errors, conn.ready["voices"], await healthy(srv.url)

        errors, offered, done = run(go())
        assert offered == ["broken"]
        assert [e["code"] for e in errors] == ["unknown_voice"] * 3
        assert all(str(tmp_path) not in e["message"] and "--voices" not in e["message"] for e in errors)
        assert "not offered" in errors[2]["message"]
        assert calls.count("broken") == 1  # discovery does not load local files; the first request does, once
        assert any(str(tmp_path) in r.getMessage() for r in caplog.records)  # the operator gets the detail
        assert done.reason == "end"
    finally:
        srv.stop()
        engine.stop()


# --- fair slots ----------------------------------------------------------------------------------

def test_admission_caps_each_owner_and_prefers_the_one_holding_fewer() -> None:
    """4 slots, at most 2 per owner: 4 requests from A then 1 from B admit A, A, B; A's others wait even
    though a slot is free."""
    from engine_fixtures import tiny_parts
    from streaming.engine import Engine, EngineConfig
    from streaming.params import SamplingParams
    from streaming.stream import SpeechRequest

    models, codec, tok = tiny_parts()
    eng = Engine(models, codec, tok, EngineConfig(max_streams=4, max_queue=8, max_streams_per_owner=2))
    params = SamplingParams(greedy=True, max_semantic_tokens=4)
    for i in range(4):
        eng.submit(SpeechRequest(text=f"From A {i}.", sampling=params, owner="A"))
    eng.submit(SpeechRequest(text="From B.", sampling=params, owner="B"))
    with eng._wake:
        eng._admit()
    owners = sorted(s.request.owner for s in eng._active.values())
    assert owners == ["A", "A", "B"] and eng.snapshot().queued == 2


def test_stalled_connection_cannot_hold_every_slot() -> None:
    """One connection opens three long requests that would each keep a slot busy for a minute; with a
    per-connection cap of 1 a neighbour's request runs to its end at once while two of the three still wait in
    the queue. (Requests that only wait for more text hold no slot at all: test_engine_parking.py.)"""
    from server_fixtures import RawClient

    engine = make_engine(max_streams=2, max_queue=8, max_streams_per_owner=1)
    srv = start_server(engine, max_streams=2, max_queue=8)
    try:
        async def go() -> tuple[Done, int]:
            hog = await RawClient.connect(srv.url)
            for i in range(3):
                await hog.speak(f"h{i}", "Holding on. " * 8, params={**PARAMS, "max_semantic_tokens": 768})
            await asyncio.to_thread(srv.wait_metric, "bark_queue_depth", lambda v: v == 2)
            done = await healthy(srv.url)
            queued = engine.snapshot().queued
            await hog.close()
            return done, queued

        done, queued = run(go())
        assert done.reason == "end" and queued == 2
    finally:
        srv.stop()
        engine.stop()


def test_start_without_text_times_out_alone() -> None:
    """A start that gets no text within request_text_timeout fails with idle_timeout for that id only;
    the connection carries on."""
    from server_fixtures import RawClient

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine, request_text_timeout=0.3)
    try:
        async def go() -> tuple[Any, Any]:
            conn = await RawClient.connect(srv.url)
            await conn.send({"type": "start", "id": "mute", "params": PARAMS})
            mute = (await conn.until_done("mute"))["mute"]
            await conn.speak("after", "Still here.")
            after = (await conn.until_done("after"))["after"]
            await conn.close()
            return mute, after

        mute, after = run(go())
        assert mute.errors[0]["code"] == "idle_timeout" and mute.done["reason"] == "error"
        assert after.done["reason"] == "end"
    finally:
        srv.stop()
        engine.stop()


# --- floods, addresses, keys ---------------------------------------------------------------------

def test_control_frame_flood_is_throttled_beside_a_healthy_stream() -> None:
    """Two flooders: 3,000 unsolicited pongs (control frames: the frame budget) and 40 junk binary frames of
    4,000 bytes (the byte budget, 20 kB/s here): the server stops reading each in turn (both throttle counters
    rise); a neighbour's request still ends normally."""
    from websockets.asyncio.client import connect

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine, max_frames_per_s=200.0, frame_burst=100, max_bytes_per_s=20_000.0)
    try:
        async def flood(count: int, size: int) -> None:
            async with connect(srv.url, max_size=None) as ws:
                await ws.recv()  # ready
                for _ in range(count):
                    await (ws.pong(b"x" * size) if size < 126 else ws.send(b"\xc1" * size))

        async def go() -> Done:
            flooders = [asyncio.create_task(flood(3000, 4)), asyncio.create_task(flood(40, 4000))]
            await asyncio.to_thread(srv.wait_metric, "bark_connections", lambda v: v >= 2)  # both flooding
            done = await healthy(srv.url)
            await asyncio.to_thread(srv.wait_metric, "bark_connections", lambda v: v == 2)
            for task in flooders:
                task.cancel()
            await asyncio.gather(*flooders, return_exceptions=True)
            return done

        assert run(go()).reason == "end"
        assert srv.metric("bark_reads_throttled_total", 'budget="frames"') > 0
        assert srv.metric("bark_reads_throttled_total", 'budget="bytes"') > 0
    finally:
        srv.stop()
        engine.stop()


def test_per_address_cap_and_trusted_proxy_addresses() -> None:
    """max_connections_per_ip=2: a third connection from one address gets 429; behind a trusted proxy the
    X-Forwarded-For address counts instead, and an untrusted peer's X-Forwarded-For is ignored."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    engine = make_engine(max_streams=2, max_queue=2)
    plain = start_server(engine, max_connections_per_ip=2)
    proxied = start_server(engine, max_connections_per_ip=2, trusted_proxies=("127.0.0.0/8",))
    try:
        async def go() -> tuple[int, int]:
            held = [await connect(plain.url) for _ in range(2)]
            with pytest.raises(InvalidStatus) as info:
                await connect(plain.url, additional_headers={"X-Forwarded-For": "203.0.113.9"})  # not trusted
            refused = info.value.response.status_code
            behind = [await connect(proxied.url, additional_headers={"X-Forwarded-For": f"203.0.113.{i}"})
                      for i in range(4)]  # four clients behind one proxy address
            with pytest.raises(InvalidStatus) as info2:
                for _ in range(3):
                    held.append(await connect(proxied.url, additional_headers={"X-Forwarded-For": "198.51.100.7"}))
            for ws in held + behind:
                await ws.close()
            return refused, info2.value.response.status_code

        assert run(go()) == (429, 429)
    finally:
        plain.stop()
        proxied.stop()
        engine.stop()


def test_per_key_concurrency_cap() -> None:
    """max_streams_per_key=1: a second request under the same key (another connection) is rate_limited while
    the first runs; another key is unaffected."""
    from server_fixtures import RawClient

    engine = make_engine(max_streams=4, max_queue=4)
    srv = start_server(engine, api_keys=("key-one-1234", "key-two-5678"), max_streams_per_key=1,
                       public_metrics=True)
    try:
        def auth(key: str) -> dict[str, Any]:
            return {"additional_headers": {"Authorization": f"Bearer {key}"}}

        async def go() -> tuple[str, str, str]:
            a1 = await RawClient.connect_with(srv.url, **auth("key-one-1234"))
            a2 = await RawClient.connect_with(srv.url, **auth("key-one-1234"))
            b = await RawClient.connect_with(srv.url, **auth("key-two-5678"))
            await a1.send({"type": "start", "id": "first", "params": PARAMS})
            await asyncio.sleep(0.1)
            await a2.speak("second", "Same key.")
            refused = (await a2.next_error())["code"]
            await b.speak("other", "Other key.")
            other = (await b.until_done("other"))["other"].done["reason"]
            await a1.send({"type": "text", "id": "first", "text": "Now."})
            await a1.send({"type": "end", "id": "first"})
            first = (await a1.until_done("first"))["first"].done["reason"]
            for c in (a1, a2, b):
                await c.close()
            return refused, other, first

        assert run(go()) == ("rate_limited", "end", "end")
    finally:
        srv.stop()
        engine.stop()


def test_metrics_keep_their_names_and_add_the_new_signals() -> None:
    """/metrics (prometheus-client) still exposes every name dashboards use, with TTFA buckets up to 60 s, and
    after one request the queue-wait, per-stage, audio-ahead and audio-seconds series have observations."""
    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine)
    try:
        assert run(healthy(srv.url)).reason == "end"
        text = srv.http("/metrics")[2]
        for name in ("bark_up", "bark_active_streams", "bark_paused_streams", "bark_queue_depth", "bark_connections",
                     "bark_unacknowledged_audio_seconds", "bark_requests_total", "bark_ttfa_seconds_count",
                     "bark_rtf_count"):
            assert f"\n{name} " in text or text.startswith(f"{name} ") or f"{name}{{" in text, name
        assert 'bark_requests_finished_total{reason="end"} 1.0' in text
        assert 'bark_ttfa_seconds_bucket{le="60.0"} 1.0' in text
        assert "_created" not in text
        from server_fixtures import metric_value

        assert metric_value(text, "bark_queue_wait_seconds_count") == 1
        assert metric_value(text, "bark_stage_seconds_count", 'stage="semantic"') == 1
        assert metric_value(text, "bark_audio_ahead_seconds_count") == 1
        assert metric_value(text, "bark_audio_seconds_total") > 0
    finally:
        srv.stop()
        engine.stop()


def test_stalled_stream_is_evicted_and_resumes_later() -> None:
    """One slot. A stream whose reader stalls (paused) gives its slot to a waiting request after evict_after_s;
    that request runs to its end; resumed, the stalled stream re-reads its prompts and finishes with the same
    tokens as when it runs alone (greedy)."""
    import numpy as np

    from engine_fixtures import collect_events, tiny_parts
    from engine_fixtures import make_engine as make_tiny_engine
    from streaming.params import SamplingParams
    from streaming.stream import SpeechRequest

    eng = make_tiny_engine(tiny_parts(), max_streams=1, max_queue=4, evict_after_s=0.05)
    try:
        long = SpeechRequest(text="A long stream that stalls.", return_tokens=True,
                             sampling=SamplingParams(greedy=True, max_semantic_tokens=120))
        alone = collect_events(eng.submit(long))[-1]
        h = eng.submit(long)
        first = next(iter(h.events(timeout=60)))  # its first audio: semantic and coarse are mid-way
        assert first is not None
        h.pause()
        other = eng.submit(SpeechRequest(text="I get the slot.", sampling=SamplingParams(greedy=True,
                                                                                         max_semantic_tokens=10)))
        assert collect_events(other)[-1].reason == "end"  # ran while the stalled stream was parked
        h.resume()
        done = collect_events(h)[-1]
        assert done.reason == "end"
        for a, b in zip(alone.tokens, done.tokens):
            assert np.array_equal(a.semantic, b.semantic) and np.array_equal(a.coarse, b.coarse)
            assert np.array_equal(a.fine, b.fine)
    finally:
        eng.stop()


# --- flush acknowledgement and keepalive (protocol additions) ---------------------------------------

def test_flush_is_acknowledged_and_keepalive_holds_an_idle_connection() -> None:
    """`flush` is answered by one `flushed` with its id; `keepalive` messages keep
    a connection with nothing in flight past the idle timeout, and without them it is closed idle_timeout."""
    from server_fixtures import RawClient

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine, idle_timeout=0.6)
    try:
        async def go() -> tuple[list[str], int | None, tuple[int | None, str]]:
            conn = await RawClient.connect(srv.url)
            await conn.send({"type": "start", "id": "f1", "params": PARAMS})
            await conn.send({"type": "text", "id": "f1", "text": "Flush me now"})
            await conn.send({"type": "flush", "id": "f1"})
            await conn.send({"type": "end", "id": "f1"})
            order = (await conn.until_done("f1"))["f1"].order
            for _ in range(8):  # 1.6 s of keepalives, well past the 0.6 s idle timeout
                await conn.send({"type": "keepalive"})
                await asyncio.sleep(0.2)
            await conn.speak("after", "Still open.")
            still = (await conn.until_done("after"))["after"].done["samples"]
            return order, still, await conn.closed()  # now silent: closed for idleness

        order, still, (code, reason) = run(go())
        assert order.count("flushed") == 1 and order[-1] == "done" and "audio" in order
        assert still > 0 and code == 1008 and reason == "idle_timeout"
    finally:
        srv.stop()
        engine.stop()


def test_client_library_surfaces_flushed_and_sends_keepalive() -> None:
    """BarkStreamClient.stream_text yields a Flushed event for each line it flushes; keepalive() is accepted."""
    from client.api import Flushed

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine)
    try:
        async def go() -> list[str]:
            async with await BarkStreamClient.connect(srv.url) as client:
                await client.keepalive()
                return [type(e).__name__ async for e in client.stream_text(["First line.\n", "Second."],
                                                                          params=PARAMS)]

        kinds = run(go())
        assert kinds.count(Flushed.__name__) == 1 and kinds[-1] == "Done"
    finally:
        srv.stop()
        engine.stop()
