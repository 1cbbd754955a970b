"""The OpenAI-compatible HTTP API, driven by the official `openai` SDK against a real server (same process,
same engine as the WebSocket): every response_format decoded with PyAV, streaming, SSE, speed, errors in
OpenAI's shape, keys, limits, and generation cancelled when the client goes away."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from streaming.engine import Engine, SpeechRequest
from streaming.events import AudioChunk, StreamDone
from streaming.voices import bundled_voices_dir, load_voice
from tests.server_fixtures import (  # noqa: F401 - engine is a fixture
    PARAMS,
    SAMPLING,
    ServerThread,
    engine,
    quantise_s16,
    run,
    start_server,
)
from tests.test_formats import decode_file

KEY = "sk-test-key"
TEXT = "Hello there. How are you?"
MANY = " ".join(f"Sentence number {n} is here." for n in range(8))  # eight segments: seconds of CPU
LONG_PARAMS = {**PARAMS, "max_semantic_tokens": 768}  # about a minute of CPU unless cancelled
EXTRA = {"params": PARAMS}  # the server's `params` extension: short, greedy requests


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[ServerThread]:
    # every test client is 127.0.0.1: a per-address rate that its own test measures, not the others
    srv = start_server(engine, http_port=0, api_keys=(KEY,), public_metrics=True, http_requests_per_s=1000.0,
                       http_request_burst=1000)
    yield srv
    srv.stop()


def sdk(srv: ServerThread, key: str | None = KEY, **kw: Any) -> openai.OpenAI:
    """The official client pointed at the server's HTTP API (no retries: each test sees the first answer)."""
    return openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server.http_port}/v1", api_key=key or "none",
                         max_retries=0, timeout=120, **kw)


def http(srv: ServerThread, path: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict, Any]:
    """A plain urllib request to the HTTP API: (status, headers, parsed JSON or text)."""
    request = urllib.request.Request(f"http://127.0.0.1:{srv.server.http_port}{path}", data=body,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                                     if key else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, dict(exc.headers), exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def reference(engine: Engine) -> np.ndarray:
    """The engine's own audio for TEXT with the preset `alloy` stands for (v2/en_speaker_0)."""
    voice = load_voice("v2/en_speaker_0", voices_dir=bundled_voices_dir(), local_files_only=True)

    async def make() -> np.ndarray:
        import asyncio

        handle = engine.submit(SpeechRequest(text=TEXT, voice=voice, sampling=SAMPLING, request_id="ref"),
                               loop=asyncio.get_running_loop())
        chunks = []
        async for event in handle:
            if isinstance(event, AudioChunk):
                chunks.append(event.samples)
            elif isinstance(event, StreamDone):
                assert event.reason == "end"
        return np.concatenate(chunks)
    return run(make())


@pytest.fixture(scope="module")
def formats(server: ServerThread, reference: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """Every response_format through audio.speech.create: (body, content type)."""
    client = sdk(server)
    out = {}
    for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"):
        response = client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format=fmt,
                                              extra_body=EXTRA)
        out[fmt] = (response.content, response.response.headers["content-type"])
    return out


def test_pcm_is_the_engines_audio_as_s16_at_24khz(formats: dict[str, tuple[bytes, str]],
                                                 reference: np.ndarray) -> None:
    """response_format pcm: raw s16le 24 kHz, equal to the engine's audio for the aliased preset."""
    body, content_type = formats["pcm"]
    got = np.frombuffer(body, "<i2").astype(np.float32) / 32767
    assert content_type.startswith("audio/pcm") and "rate=24000" in content_type
    assert got.shape == reference.shape
    assert np.abs(got - quantise_s16(reference)).max() <= 1 / 32767 + 1e-7


def test_wav_streams_a_header_of_unknown_length_then_the_same_samples(formats: dict[str, tuple[bytes, str]],
                                                                     reference: np.ndarray) -> None:
    body, content_type = formats["wav"]
    assert content_type == "audio/wav" and body[4:8] == body[40:44] == b"\xff\xff\xff\xff"
    assert body[44:] == formats["pcm"][0]
    with wave.open(io.BytesIO(body)) as w:  # the standard library reads it to the end
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        assert len(w.readframes(10**9)) == 2 * reference.size
    audio, rate, _ = decode_file(body)
    assert rate == 24_000 and audio.size == reference.size


@pytest.mark.parametrize("fmt, codec, content_type, extra", [
    ("mp3", ("mp3float", "mp3"), "audio/mpeg", 2 * 1152), ("opus", ("opus",), "audio/ogg", 0),
    ("aac", ("aac",), "audio/aac", 2048), ("flac", ("flac",), "audio/flac", 0)])
def test_compressed_formats_decode_with_pyav_to_the_right_length(
        formats: dict[str, tuple[bytes, str]], reference: np.ndarray, fmt: str, codec: tuple[str, ...],
        content_type: str, extra: int) -> None:
    """Each compressed body is a file PyAV decodes: its codec, 24 kHz (Opus decodes at 48 kHz, its native
    rate), and the engine's duration (MP3 and AAC may add their encoder delay and padding)."""
    body, got_type = formats[fmt]
    assert got_type == content_type
    audio, rate, name = decode_file(body)
    assert name in codec and rate == (48_000 if fmt == "opus" else 24_000)
    seconds = reference.size / 24_000
    assert seconds - 1e-9 <= audio.size / rate <= seconds + extra / 24_000 + 1e-9
    if fmt == "flac":  # lossless at 16 bits
        assert np.abs(audio - reference).max() <= 1 / 32768 + 1e-6


def test_default_format_is_mp3_and_any_model_name_is_accepted(server: ServerThread) -> None:
    response = sdk(server).audio.speech.create(model="gpt-4o-mini-tts", input=TEXT, voice="v2/en_speaker_6",
                                               instructions="Speak cheerfully.", extra_body=EXTRA)
    assert response.response.headers["content-type"] == "audio/mpeg"
    assert decode_file(response.content)[2] in ("mp3float", "mp3")


def test_streaming_response_sends_first_bytes_before_synthesis_ends(server: ServerThread) -> None:
    """with_streaming_response: the first bytes arrive while the engine is still generating (the request is
    in flight and unfinished), then the whole body follows."""
    before = server.metric("bark_requests_finished_total", 'reason="end"')
    with sdk(server).with_streaming_response.audio.speech.create(
            model="tts-1", input=MANY, voice="alloy", response_format="pcm", extra_body=EXTRA) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        in_flight = server.metric("bark_http_requests_in_flight")
        finished = server.metric("bark_requests_finished_total", 'reason="end"')
        rest = b"".join(chunks)
    assert first and in_flight == 1 and finished == before
    assert len(first) < len(first + rest) and (len(first) + len(rest)) % 2 == 0
    server.wait_metric("bark_http_requests_in_flight", lambda v: v == 0)


def test_client_disconnect_cancels_the_generation(server: ServerThread) -> None:
    """Leaving a streaming response after its first bytes cancels the engine stream (counted as disconnected)."""
    before = server.metric("bark_requests_finished_total", 'reason="disconnected"')
    with sdk(server).with_streaming_response.audio.speech.create(
            model="tts-1", input=MANY, voice="alloy", response_format="pcm",
            extra_body={"params": LONG_PARAMS}) as response:
        assert next(response.iter_bytes())
    server.wait_metric("bark_http_requests_in_flight", lambda v: v == 0, timeout=20)
    assert server.metric("bark_requests_finished_total", 'reason="disconnected"') == before + 1
    server.wait_metric("bark_active_streams", lambda v: v == 0, timeout=20)  # the engine stopped it


def test_sse_carries_the_same_bytes_in_delta_events_then_done(server: ServerThread,
                                                             formats: dict[str, tuple[bytes, str]]) -> None:
    """stream_format="sse": speech.audio.delta events whose base64 audio joins to the pcm body, then one
    speech.audio.done with usage."""
    response = sdk(server).audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm",
                                               stream_format="sse", extra_body=EXTRA)
    assert response.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.split("\n\n") if line.strip()]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 3
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == formats["pcm"][0]


def test_speed_time_stretches(server: ServerThread, reference: np.ndarray) -> None:
    """speed 2.0 halves the duration (within 1 % plus the filter's last window); the rate stays 24 kHz."""
    response = sdk(server).audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="wav",
                                               speed=2.0, extra_body=EXTRA)
    audio, rate, _ = decode_file(response.content)
    assert rate == 24_000 and abs(audio.size - reference.size / 2) <= 0.01 * reference.size + 720


# --- errors -------------------------------------------------------------------------------


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}, body
    return body


def test_unknown_voice_is_400_naming_voice_and_examples(server: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(server).audio.speech.create(model="tts-1", input=TEXT, voice="nobody", extra_body=EXTRA)
    err = _error(info.value)
    assert (err["param"], err["type"]) == ("voice", "invalid_request_error")
    assert err["message"].startswith("voice: 'nobody' is not offered") and "alloy" in err["message"]


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_401(server: ServerThread, key: str | None) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(server, key=key).audio.speech.create(model="tts-1", input=TEXT, voice="alloy", extra_body=EXTRA)
    assert _error(info.value)["code"] == "invalid_api_key"
    assert info.value.response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(openai.AuthenticationError):
        sdk(server, key=key).models.list()


@pytest.mark.parametrize("fields, param, message", [
    ({"response_format": "ogg"}, "response_format", "response_format: 'ogg' is not one of mp3, opus, aac, flac, "
                                                     "wav, pcm"),
    ({"speed": 4.5}, "speed", "speed: 4.5 is outside 0.25 to 4.0"),
    ({"speed": "fast"}, "speed", "speed: expected a number from 0.25 to 4.0, got str"),
    ({"stream_format": "chunks"}, "stream_format", "stream_format: 'chunks' is not one of audio, sse"),
    ({"input": "   "}, "input", "input: must not be empty or only whitespace"),
    ({"input": "x" * 2001}, "input", "input: 2001 characters exceeds the maximum of 2000"),
    ({"temperature": 0.5}, "temperature", "temperature: unknown parameter (valid: model, input, voice, "
                                          "response_format, speed, stream_format, instructions, params)"),
    ({"params": {"top_k": 0}}, "params.top_k", "params.top_k: 0 is outside"),
])
def test_bad_fields_are_400_naming_the_field_and_valid_values(server: ServerThread, fields: dict[str, Any],
                                                              param: str, message: str) -> None:
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", **fields}
    status, _, answer = http(server, "/v1/audio/speech", json.dumps(body).encode())
    assert status == 400, answer
    err = answer["error"]
    assert err["param"] == param and err["message"].startswith(message), err
    assert err["type"] == "invalid_request_error"


def test_missing_input_and_bad_json(server: ServerThread) -> None:
    status, _, answer = http(server, "/v1/audio/speech", b'{"model": "tts-1", "voice": "alloy"}')
    assert status == 400 and answer["error"]["param"] == "input" and answer["error"]["code"] == \
        "missing_required_parameter"
    status, _, answer = http(server, "/v1/audio/speech", b"{not json")
    assert status == 400 and answer["error"]["message"].startswith("body: not valid JSON")


def test_body_over_the_limit_is_413_unread(server: ServerThread) -> None:
    status, _, answer = http(server, "/v1/audio/speech", b" " * (6 * 2000 + 20_000))
    assert status == 413 and answer["error"]["code"] == "request_too_large"


def test_unknown_path_and_method_in_openais_shape(server: ServerThread) -> None:
    status, _, answer = http(server, "/v1/chat/completions", b"{}")
    assert status == 404 and "POST /v1/audio/speech" in answer["error"]["message"]
    status, _, answer = http(server, "/v1/audio/speech")
    assert status == 405 and answer["error"]["message"].startswith("method: GET is not allowed")


def test_models_voices_health_and_metrics(server: ServerThread) -> None:
    """GET /v1/models through the SDK; the voice listing holds presets and aliases; /healthz and /metrics
    answer on the HTTP port too; HTTP requests count in the shared metrics."""
    models = {m.id for m in sdk(server).models.list()}
    assert {"random-tiny", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= models
    status, _, voices = http(server, "/v1/audio/voices")
    ids = {v["id"]: v for v in voices["voices"]}
    assert status == 200 and "v2/en_speaker_6" in ids and ids["alloy"]["preset"] == "v2/en_speaker_0"
    status, _, health = http(server, "/healthz", key=None)
    assert status == 200 and health["status"] == "ok"
    status, headers, text = http(server, "/metrics", key=None)  # public_metrics, as on the WebSocket port
    assert status == 200 and 'bark_http_responses_total{endpoint="speech",status="200"}' in text
    assert server.metric("bark_requests_total") >= 1


# --- limits ---------------------------------------------------------------------------------


def test_request_rate_per_address_is_429_with_retry_after(engine: Engine) -> None:
    """Past its burst an address gets 429 + Retry-After; /metrics still wants the key (no public_metrics)."""
    srv = start_server(engine, http_port=0, http_requests_per_s=0.01, http_request_burst=1, api_keys=(KEY,))
    try:
        assert http(srv, "/metrics", key=None)[0] == 401 and http(srv, "/metrics")[0] == 200
        client = sdk(srv)
        client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm", extra_body=EXTRA)
        with pytest.raises(openai.RateLimitError) as info:
            client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", extra_body=EXTRA)
        assert _error(info.value)["code"] == "rate_limit_exceeded"
        assert int(info.value.response.headers["retry-after"]) >= 1
    finally:
        srv.stop()


def test_full_http_api_is_503_with_retry_after_and_others_go_on(engine: Engine) -> None:
    """With http_max_requests=1 and one request streaming, the next gets 503 + Retry-After; the first is
    not disturbed and completes."""
    srv = start_server(engine, http_port=0, http_max_requests=1)
    try:
        client = sdk(srv)
        with client.with_streaming_response.audio.speech.create(
                model="tts-1", input=MANY, voice="alloy", response_format="pcm", extra_body=EXTRA) as first:
            chunks = first.iter_bytes()
            head = next(chunks)
            with pytest.raises(openai.InternalServerError) as info:
                client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", extra_body=EXTRA)
            body = head + b"".join(chunks)
        assert info.value.status_code == 503 and _error(info.value)["code"] == "overloaded"
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert len(body) > len(head) and srv.metric("bark_requests_finished_total", 'reason="end"') >= 1
    finally:
        srv.stop()


def test_http_port_is_off_unless_given(engine: Engine) -> None:
    srv = start_server(engine)
    try:
        assert srv.server.http_port is None
    finally:
        srv.stop()


def test_a_reader_that_stops_reading_is_cut_off(engine: Engine) -> None:
    """A client that sends a request and never reads (a 2 KiB receive buffer) stalls the writes once the
    socket buffers fill: the engine stream pauses, and after slow_consumer_timeout the request is cancelled
    and counted as slow_consumer. speed 0.25 makes four times the bytes per generated second, so the buffers
    fill sooner."""
    import socket

    srv = start_server(engine, http_port=0, slow_consumer_timeout=1.0)
    text = " ".join(f"Sentence number {n} is here." for n in range(40))
    body = json.dumps({"model": "tts-1", "input": text, "response_format": "pcm", "speed": 0.25,
                       "params": LONG_PARAMS}).encode()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            sock.connect(("127.0.0.1", srv.server.http_port))
            sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            srv.wait_metric("bark_http_requests_in_flight", lambda v: v == 1)
            srv.wait_metric("bark_http_requests_in_flight", lambda v: v == 0, timeout=120)  # ended unread
        assert srv.metric("bark_requests_finished_total", 'reason="slow_consumer"') == 1
        srv.wait_metric("bark_active_streams", lambda v: v == 0)
    finally:
        srv.stop()


def test_voice_alias_flag_overrides_and_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    """--voice-alias NAME=PRESET adds or overrides an alias; a malformed one exits 2 naming the flag."""
    from server.__main__ import build_parser, config_from_args, main

    config = config_from_args(build_parser().parse_args(["--voice-alias", "alloy=v2/en_speaker_6",
                                                         "--voice-alias", "narrator=v2/de_speaker_1",
                                                         "--http-port", "8766"]))
    aliases = dict(config.voice_aliases)
    assert aliases["alloy"] == "v2/en_speaker_6" and aliases["narrator"] == "v2/de_speaker_1"
    assert aliases["nova"] == "v2/en_speaker_6" and config.http_port == 8766
    assert main(["--voice-alias", "alloy"]) == 2
    assert "--voice-alias: expected NAME=PRESET" in capsys.readouterr().err


def test_connections_past_http_max_connections_get_503_and_the_rest_are_served(engine: Engine) -> None:
    """Open connections are capped, idle ones included: one more gets 503 in OpenAI's shape with Retry-After
    and is closed; those already open are still served, and once one closes a new connection is served."""
    import socket

    srv = start_server(engine, http_port=0, http_max_connections=2)
    request = _raw_get
    try:
        port = srv.server.http_port
        held, error = _one_past_the_cap(port, 503)
        assert error["code"] == "overloaded" and "--http-max-connections" in error["message"], error
        assert srv.metric("bark_handshakes_refused_total", 'reason="http_connections"') == 1
        for sock in held:  # the connections already open are served
            assert request(sock).startswith(b"HTTP/1.1 200"), sock
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the close, then takes a new connection
            with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
                answer = request(again)
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # polling interval, bounded by the deadline
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        held[0].close()
    finally:
        srv.stop()


def _one_past_the_cap(port: int, status: int) -> tuple[list[Any], dict[str, Any]]:
    """Open two connections and hold them, then a third that must be refused with `status` and Retry-After:
    (the two held sockets, the third's OpenAI error)."""
    import socket

    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
        answer = _raw_get(third, "/v1/models")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert b"\r\nRetry-After: 1\r\n" in head
    return held, json.loads(body)["error"]


def _raw_get(sock: Any, target: str = "/healthz") -> bytes:
    """GET `target` on an open socket; the whole answer (head and body)."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_connections_per_address_are_capped_except_a_trusted_proxys(engine: Engine) -> None:
    """--max-connections-per-ip counts open HTTP connections too (idle keep-alive ones included): one more from
    the same address gets 429 in OpenAI's shape with Retry-After, while others are served; a trusted proxy's
    connections carry many clients and are not counted per address."""
    import socket

    srv = start_server(engine, http_port=0, max_connections_per_ip=2)
    try:
        held, error = _one_past_the_cap(srv.server.http_port, 429)
        assert error["code"] == "rate_limit_exceeded" and "--max-connections-per-ip" in error["message"], error
        assert srv.metric("bark_handshakes_refused_total", 'reason="per_ip"') == 1
        assert all(_raw_get(sock).startswith(b"HTTP/1.1 200") for sock in held)
        for sock in held:
            sock.close()
    finally:
        srv.stop()
    proxied = start_server(engine, http_port=0, max_connections_per_ip=2, trusted_proxies=("127.0.0.1",))
    try:
        port = proxied.server.http_port
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        assert all(_raw_get(sock).startswith(b"HTTP/1.1 200") for sock in held)
        for sock in held:
            sock.close()
    finally:
        proxied.stop()


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
