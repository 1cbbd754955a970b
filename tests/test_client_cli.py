"""Tests for client.api and `python -m client` against a scripted protocol-v1 server on port 0."""

from __future__ import annotations

import asyncio
import ctypes.util
import io
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from client.__main__ import main, parse_args
from client.api import (
    AudioChunk,
    BarkStreamClient,
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    Done,
    Segment,
    ServerError,
    collect,
)
from client.wav import read_wav
from protocol import (
    Limits,
    audio_message,
    decode_client_message,
    done_message,
    encode_server_message,
    error_message,
    pcm_encode,
    ready_message,
    segment_message,
)

Script = Callable[[ServerConnection, Any, list[Any]], Awaitable[None]]
LIMITS = Limits(max_text_chars=16, max_request_chars=1000)


def _audio(n: int, seed: int) -> np.ndarray:
    """float32 [n] with |x| in [0.02, 0.9]: no sample quantises to 0, so silence is distinguishable."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.02, 0.9, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)


async def _send(ws: ServerConnection, msg: dict[str, Any]) -> None:
    await ws.send(encode_server_message(msg))


async def send_speech(ws: ServerConnection, req_id: str, x: np.ndarray, chunk: int = 1000,
                      encoding: str = "pcm_s16le") -> None:
    """Send `x` as audio frames for `req_id`, a segment, then done(end)."""
    for seq, start in enumerate(range(0, x.size, chunk)):
        await _send(ws, audio_message(req_id, seq, start, pcm_encode(x[start : start + chunk], encoding)))
    await _send(ws, segment_message(req_id, "hi", 0, x.size))
    await _send(ws, done_message(req_id, "end", x.size, {"ttfa_ms": 12.0, "rtf": 0.5}))


async def speak_back(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
    """Answer each speak with 3500 samples seeded by the text's length."""
    if type(msg).__name__ == "Speak":
        await send_speech(ws, msg.id, _audio(3500, len(msg.text)), encoding=msg.encoding)


async def _serve(script: Script, seen: list[Any], headers: list[Any]) -> Any:
    async def handler(ws: ServerConnection) -> None:
        headers.append(ws.request.headers)
        await _send(ws, ready_message("fake", ["v1"], LIMITS))
        async for frame in ws:
            msg = decode_client_message(frame, LIMITS)  # the client must speak valid protocol v1
            seen.append(msg)
            await script(ws, msg, seen)

    return await serve(handler, "127.0.0.1", 0, compression=None)


def run_with_server(script: Script, body: Callable[[str], Awaitable[Any]]) -> tuple[Any, list[Any], list[Any]]:
    """Run `body(url)` against a fake server running `script`; return (result, client messages, headers)."""
    seen: list[Any] = []
    headers: list[Any] = []

    async def go() -> Any:
        server = await _serve(script, seen, headers)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(body(f"ws://127.0.0.1:{port}/v1/stream"), 20)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(go()), seen, headers


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- API ------------------------------------------------------------------------------


def test_speak_yields_decoded_audio_segment_and_done() -> None:
    """speak() sends a valid speak message and yields the server's audio (within int16 rounding), segment, done."""
    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            assert client.info.sample_rate == 24_000 and client.info.voices == ("v1",)
            return [e async for e in client.speak("hello", voice="v1", params={"seed": 3})]

    events, seen, _ = run_with_server(speak_back, body)
    audio = np.concatenate([e.samples for e in events if isinstance(e, AudioChunk)])
    assert np.abs(audio - _audio(3500, 5)).max() <= 0.5 / 32767 + 1e-7
    assert [e.seq for e in events if isinstance(e, AudioChunk)] == [0, 1, 2, 3]
    assert isinstance(events[-2], Segment) and events[-1] == Done("r1", "end", 3500, {"ttfa_ms": 12.0, "rtf": 0.5})
    (msg,) = seen
    assert (msg.text, msg.voice, msg.encoding, msg.sampling.seed) == ("hello", "v1", "pcm_s16le", 3)


def test_concurrent_requests_are_demultiplexed_by_id() -> None:
    """Three requests in flight on one connection, their frames interleaved, each get only their own audio."""
    async def interleave(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if len(seen) < 3:
            return
        xs = {m.id: _audio(2000, len(m.text)) for m in seen}
        for k in range(4):  # round-robin 500-sample frames across the ids
            for rid, x in xs.items():
                await _send(ws, audio_message(rid, k, 500 * k, pcm_encode(x[500 * k : 500 * (k + 1)], "pcm_f32le")))
        for rid, x in xs.items():
            await _send(ws, done_message(rid, "end", x.size))

    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            texts = ["a", "bb", "ccc"]
            return await asyncio.gather(*(collect(client.speak(t, encoding="pcm_f32le")) for t in texts))

    results, _, _ = run_with_server(interleave, body)
    for n, (audio, done) in enumerate(results, start=1):
        np.testing.assert_array_equal(audio, _audio(2000, n))
        assert done.reason == "end"


def test_error_for_one_id_raises_server_error_and_spares_the_others() -> None:
    """An error naming one request raises ServerError there; another request on the connection completes."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ != "Speak":
            return
        if msg.text == "bad":
            await _send(ws, error_message("overloaded", "server full", id=msg.id, retry_after_ms=250))
        else:
            await send_speech(ws, msg.id, _audio(100, 1))

    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            with pytest.raises(ServerError) as info:
                await collect(client.speak("bad", id="b-1"))
            audio, done = await collect(client.speak("good"))
            return info.value, audio, done

    (err, audio, done), seen, _ = run_with_server(script, body)
    assert (err.code, err.id, err.retry_after_ms) == ("overloaded", "b-1", 250)
    assert audio.size == 100 and done.reason == "end"
    assert [type(m).__name__ for m in seen] == ["Speak", "Speak"]  # an error ends the request: no stray cancel


def test_stream_text_sends_start_text_flush_end_splitting_long_pieces() -> None:
    """stream_text sends start, each piece as text (split at max_text_chars), flush after a line, then end."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "End":
            await send_speech(ws, msg.id, _audio(10, 0))

    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            return await collect(client.stream_text(["Hello ", "world.\n", "x" * 40], id="chat-7", voice="v1"))

    (audio, done), seen, _ = run_with_server(script, body)
    kinds = [type(m).__name__ for m in seen]
    assert kinds == ["Start", "Text", "Text", "Flush", "Text", "Text", "Text", "End"]
    texts = [m.text for m in seen if type(m).__name__ == "Text"]
    assert "".join(texts) == "Hello world.\n" + "x" * 40 and max(map(len, texts)) <= LIMITS.max_text_chars
    assert done.id == "chat-7" and audio.size == 10


def test_failing_text_source_raises_in_the_consumer_and_cancels() -> None:
    """An exception from the text source surfaces from stream_text and the request is cancelled."""
    async def pieces() -> AsyncIterator[str]:
        yield "Hi.\n"
        raise KeyError("llm went away")

    async def body(url: str) -> None:
        async with await BarkStreamClient.connect(url) as client:
            with pytest.raises(KeyError, match="llm went away"):
                await collect(client.stream_text(pieces()))
            assert client.in_flight == ()

    _, seen, _ = run_with_server(lambda ws, m, s: asyncio.sleep(0), body)
    assert [type(m).__name__ for m in seen] == ["Start", "Text", "Flush", "Cancel"]


def test_leaving_speak_early_cancels_the_request() -> None:
    """Breaking out of speak() after the first chunk sends cancel for that id."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "Speak" and msg.text == "again":
            await send_speech(ws, msg.id, _audio(10, 0))
        elif type(msg).__name__ == "Speak":
            await _send(ws, audio_message(msg.id, 0, 0, pcm_encode(_audio(10, 0), "pcm_s16le")))
        elif type(msg).__name__ == "Cancel":
            await _send(ws, done_message(msg.id, "cancelled", 10))

    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            events = client.speak("long text")
            async for event in events:
                assert isinstance(event, AudioChunk)
                break
            await events.aclose()
            return await collect(client.speak("again"))  # the connection is still usable

    (audio, done), seen, _ = run_with_server(script, body)
    assert [(type(m).__name__, m.id) for m in seen] == [("Speak", "r1"), ("Cancel", "r1"), ("Speak", "r2")]
    assert done.id == "r2" and audio.size == 10


def test_cancel_by_id_ends_with_done_cancelled() -> None:
    """cancel(id) reaches the server and the request's events end with Done(reason='cancelled')."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "Speak":
            await _send(ws, audio_message(msg.id, 0, 0, pcm_encode(_audio(10, 0), "pcm_s16le")))
        elif type(msg).__name__ == "Cancel":
            await _send(ws, done_message(msg.id, "cancelled", 10))

    async def body(url: str) -> Any:
        async with await BarkStreamClient.connect(url) as client:
            events = []
            async for event in client.speak("long text", id="x"):
                events.append(event)
                if len(events) == 1:
                    assert await client.cancel("x")
            assert not await client.cancel("x")  # no longer in flight: nothing sent
            return events

    events, seen, _ = run_with_server(script, body)
    assert events[-1].reason == "cancelled" and [type(m).__name__ for m in seen] == ["Speak", "Cancel"]


def test_connection_lost_mid_request_raises_connection_lost() -> None:
    """When the server drops the connection mid-request, the request raises ConnectionLost."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        await _send(ws, audio_message(msg.id, 0, 0, pcm_encode(_audio(10, 0), "pcm_s16le")))
        await ws.close(1011, "boom")

    async def body(url: str) -> None:
        client = await BarkStreamClient.connect(url)
        with pytest.raises(ConnectionLost, match="r1"):
            await collect(client.speak("hi"))
        with pytest.raises(ConnectionLost):
            await collect(client.speak("after"))
        await client.close()
        await client.close()  # safe twice

    run_with_server(script, body)


def test_audio_gap_is_a_client_error() -> None:
    """An audio frame whose seq skips ahead is reported instead of played out of place."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        await _send(ws, audio_message(msg.id, 1, 0, pcm_encode(_audio(10, 0), "pcm_s16le")))

    async def body(url: str) -> None:
        async with await BarkStreamClient.connect(url) as client:
            with pytest.raises(ClientError, match="expected seq 0"):
                await collect(client.speak("hi"))

    run_with_server(script, body)


def test_caller_mistakes_raise_value_error() -> None:
    """A bad id, a duplicate id in flight or an unknown encoding raises ValueError naming the field."""
    async def body(url: str) -> None:
        async with await BarkStreamClient.connect(url) as client:
            with pytest.raises(ValueError, match="id:"):
                await collect(client.speak("hi", id="no spaces"))
            with pytest.raises(ValueError, match="encoding:"):
                await collect(client.speak("hi", encoding="wav"))
            with pytest.raises(ValueError, match="text:"):
                await collect(client.speak("  "))
            first = client.speak("hi", id="same")
            await first.__anext__()
            with pytest.raises(ValueError, match="already in flight"):
                await collect(client.speak("hi", id="same"))
            await first.aclose()

    run_with_server(speak_back, body)


def test_unreachable_server_is_connection_failed() -> None:
    """Connecting to a closed port raises ConnectionFailed with the url and a hint to start the server."""
    url = f"ws://127.0.0.1:{_closed_port()}/v1/stream"
    with pytest.raises(ConnectionFailed, match=r"cannot reach .*connection refused; is `python -m server` running\?"):
        asyncio.run(BarkStreamClient.connect(url, open_timeout=5))


def test_api_key_is_sent_and_http_401_is_explained() -> None:
    """The CLI's --api-key arrives as a Bearer header; a 401 handshake becomes ConnectionFailed naming --api-key."""
    async def body(url: str) -> None:
        async with await BarkStreamClient.connect(url, additional_headers={"Authorization": "Bearer k1"}):
            pass

    _, _, headers = run_with_server(speak_back, body)
    assert headers[0]["Authorization"] == "Bearer k1"

    async def refuse() -> None:
        async def handler(ws: ServerConnection) -> None:
            raise AssertionError("unreachable")

        def reject(ws: ServerConnection, request: Any) -> Any:
            return ws.respond(401, "no key\n")

        async with serve(handler, "127.0.0.1", 0, process_request=reject) as server:
            port = server.sockets[0].getsockname()[1]
            await BarkStreamClient.connect(f"ws://127.0.0.1:{port}/v1/stream")

    with pytest.raises(ConnectionFailed, match=r"HTTP 401; check --api-key"):
        asyncio.run(refuse())


# --- CLI ------------------------------------------------------------------------------


def test_parse_args_maps_sampling_flags_to_wire_params() -> None:
    """Only the sampling flags given become wire params, under their wire names."""
    args = parse_args(["hi", "--text-temp", "0.6", "--waveform-temp", "0.5", "--top-k", "50", "--seed", "7",
                       "--greedy", "--max-semantic-tokens", "64", "--top-p", "0.9", "--device", "3"])
    assert args.params == {"text_temp": 0.6, "waveform_temp": 0.5, "top_k": 50, "top_p": 0.9, "seed": 7,
                           "greedy": True, "max_semantic_tokens": 64}
    assert args.device == 3 and args.url == "ws://localhost:8765/v1/stream" and args.prebuffer_ms == 150
    assert parse_args(["hi"]).params == {}


@pytest.mark.parametrize(
    "argv, message",
    [(["hi", "--no-play"], "--no-play needs --output"), (["hi", "--top-k", "0"], "--top-k: 0 is outside"),
     (["hi", "--prebuffer-ms", "-5"], "--prebuffer-ms"), ([" "], "nothing to speak")],
)
def test_parse_args_rejects_mistakes_naming_the_flag(argv: list[str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Usage mistakes exit with status 2 and a message naming the flag."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_unreachable_server_prints_one_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m client` against a closed port exits 1 with one line saying the server is not running."""
    url = f"ws://127.0.0.1:{_closed_port()}/v1/stream"
    assert main(["hi", "--url", url, "--no-play", "-o", str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot reach {url}: connection refused; is `python -m server` running?"


def _run_cli(argv: list[str], script: Script = speak_back) -> tuple[int, list[Any]]:
    async def body(url: str) -> int:
        return await asyncio.to_thread(main, [*argv, "--url", url])  # main() runs its own event loop

    return run_with_server(script, body)[:2]


def test_cli_no_play_writes_the_wav_and_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-play --output writes exactly the received audio and prints TTFA and real-time factor."""
    out = tmp_path / "out.wav"
    rc, seen = _run_cli(["hello", "--no-play", "--output", str(out), "--seed", "1", "--api-key", "k"])
    assert rc == 0 and seen[0].sampling.seed == 1
    audio, rate = read_wav(out)
    assert rate == 24_000 and np.abs(audio - _audio(3500, 5)).max() <= 1 / 32767
    report = capsys.readouterr().out
    assert "time to first audio:" in report and "(server: 12 ms)" in report and "real-time factor:" in report


def test_cli_reads_stdin_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-` sends stdin as text messages with a flush after every line, then end."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "End":
            await send_speech(ws, msg.id, _audio(50, 0))

    monkeypatch.setattr(sys, "stdin", io.StringIO("First line.\nSecond line.\n"))
    rc, seen = _run_cli(["-", "--no-play", "-o", str(tmp_path / "s.wav")], script)
    assert rc == 0
    assert [(type(m).__name__, getattr(m, "text", None)) for m in seen] == [
        ("Start", None), ("Text", "First line.\n"), ("Flush", None), ("Text", "Second line.\n"), ("Flush", None),
        ("End", None)]


def test_cli_server_error_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused request (unknown voice) prints the server's code and message and exits 1."""
    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "Speak":
            await _send(ws, error_message("unknown_voice", "voice: 'zz' is not one of v1", id=msg.id))

    rc, _ = _run_cli(["hi", "--voice", "zz", "--no-play", "-o", str(tmp_path / "e.wav")], script)
    assert rc == 1
    assert "error: the server refused the request: unknown_voice: voice: 'zz'" in capsys.readouterr().err


# --- CLI through the real PortAudio -> ALSA path (see tests/alsa/asound.conf) ---------------

ALSA_DIR = Path(__file__).resolve().parent / "alsa"
ROOT = ALSA_DIR.parents[1]
needs_portaudio = pytest.mark.skipif(
    ctypes.util.find_library("portaudio") is None,
    reason="libportaudio2 is not installed (Debian/Ubuntu: apt-get install libportaudio2)",
)


def _run_cli_process(argv: list[str], alsa_config: str, raw: Path) -> tuple[int, str, str]:
    """Run `python -m client ARGV --url <fake server>` in a subprocess with a test ALSA config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALSA_", "JACK_"))}
    env.update(ALSA_CONFIG_PATH=str(ALSA_DIR / alsa_config), BARK_ALSA_OUT=str(raw), JACK_NO_START_SERVER="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))

    async def body(url: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "client", *argv, "--url", url, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return run_with_server(speak_back, body)[0]


@needs_portaudio
def test_cli_plays_the_received_audio_through_alsa(tmp_path: Path) -> None:
    """`python -m client` plays exactly the received samples on the ALSA device and reports underruns."""
    raw = tmp_path / "device.raw"
    # the null device plays ~1000x faster than real time; a prebuffer longer than the
    # audio makes playback start at `done`, so the count of underruns is deterministic
    rc, out, err = _run_cli_process(["hello", "--prebuffer-ms", "1000"], "asound.conf", raw)
    assert rc == 0, err
    device = np.fromfile(raw, dtype="<i2").astype(np.float64) / 32768
    played = device[device != 0]
    sent = np.round(_audio(3500, 5) * 32767) / 32767  # what pcm_s16le delivers
    assert played.size == sent.size and np.abs(played - sent).max() <= 1 / 32767
    assert "underruns: 0" in out and "time to first sound:" in out


@needs_portaudio
def test_cli_without_audio_device_suggests_no_play(tmp_path: Path) -> None:
    """With no output device, the CLI exits 1 with one line suggesting --no-play --output."""
    rc, _, err = _run_cli_process(["hello"], "no_device.conf", tmp_path / "unused.raw")
    assert rc == 1
    assert err.strip() == ("error: cannot play audio: no audio output device found; "
                           "use --no-play --output out.wav to write a file instead")


def test_cli_stdin_mode_takes_flushed_acknowledgements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers each flush with `flushed` (protocol addition) does not trip the CLI."""
    from protocol import flushed_message

    async def script(ws: ServerConnection, msg: Any, seen: list[Any]) -> None:
        if type(msg).__name__ == "Flush":
            await _send(ws, flushed_message(msg.id))
        if type(msg).__name__ == "End":
            await send_speech(ws, msg.id, _audio(50, 0))

    monkeypatch.setattr(sys, "stdin", io.StringIO("First line.\nSecond line.\n"))
    rc, _ = _run_cli(["-", "--no-play", "-o", str(tmp_path / "f.wav")], script)
    assert rc == 0 and read_wav(tmp_path / "f.wav")[0].size == 50


def test_cli_list_voices_env_key_and_policy_flags(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--list-voices prints the server's voices; the key comes from $BARK_API_KEY; --lookahead and
    --fine-policy become wire params."""
    monkeypatch.setenv("BARK_API_KEY", "env-key-123")

    async def body(url: str) -> int:
        return await asyncio.to_thread(main, ["--list-voices", "--url", url])

    rc, _, headers = run_with_server(speak_back, body)
    assert rc == 0 and capsys.readouterr().out.strip() == "v1"
    assert headers[0]["Authorization"] == "Bearer env-key-123"
    args = parse_args(["hi", "--lookahead", "bounded", "--fine-policy", "offline"])
    assert args.params == {"lookahead": "bounded", "fine_policy": "offline"}


@needs_portaudio
def test_cli_output_is_written_when_playback_is_impossible(tmp_path: Path) -> None:
    """With no output device but --output, the CLI warns and still writes the file."""
    out = tmp_path / "kept.wav"
    rc, stdout, err = _run_cli_process(["hello", "--output", str(out)], "no_device.conf", tmp_path / "unused.raw")
    assert rc == 0, err
    assert "warning: cannot play" in err and f"wrote {out}" in stdout
    assert read_wav(out)[0].size == 3500
