"""Wyoming text to speech (Home Assistant), tested with the wyoming library's own AsyncTcpClient as Home Assistant
drives it: describe, one-shot synthesize, streaming synthesize with Home Assistant's in-stream `synthesize`, errors,
and a disconnect that frees the engine slot. The audio must equal the WebSocket's for the same request (greedy).

Wyoming requests carry no sampling parameters, so the test server caps them with --wyoming-params (the same
`params` the WebSocket tests send: greedy, a few semantic tokens per sentence).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from server.__main__ import main as server_main
from server.config import ServerConfig
from streaming.errors import ConfigError
from tests.server_fixtures import PARAMS, RawClient, ServerThread, engine, run, start_server  # noqa: F401

SAME = {**PARAMS, "seed": 7}  # greedy, capped, one seed: what both paths use when audio is compared
WYOMING_PARAMS = tuple(SAME.items())
PIECES = ("Hello", " there.", " How are", " you today?")
VOICE = "v2/en_speaker_6"


@pytest.fixture(scope="module")
def server(engine) -> Iterator[ServerThread]:  # noqa: F811 - module-scoped engine from server_fixtures
    srv = start_server(engine, wyoming_port=0, wyoming_params=WYOMING_PARAMS)
    yield srv
    srv.stop()


def client(srv: ServerThread) -> AsyncTcpClient:
    assert srv.server is not None and srv.server.wyoming_port is not None
    return AsyncTcpClient("127.0.0.1", srv.server.wyoming_port, connect_timeout=10, read_timeout=60)


@dataclass
class Answer:
    """The events a server sent for one request."""

    events: list[Event] = field(default_factory=list)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    @property
    def start(self) -> AudioStart:
        return AudioStart.from_event(next(e for e in self.events if AudioStart.is_type(e.type)))

    def chunks(self) -> list[AudioChunk]:
        return [AudioChunk.from_event(e) for e in self.events if AudioChunk.is_type(e.type)]

    @property
    def audio(self) -> bytes:
        return b"".join(c.audio for c in self.chunks())

    @property
    def error(self) -> Error:
        return Error.from_event(next(e for e in self.events if Error.is_type(e.type)))


async def read_until(c: AsyncTcpClient, *last: type) -> Answer:
    """Read events until one of type `last` (included) or the end of the connection."""
    answer = Answer()
    while True:
        event = await c.read_event()
        if event is None:
            return answer
        answer.events.append(event)
        if any(kind.is_type(event.type) for kind in last):
            return answer


async def one_shot(srv: ServerThread, text: str, voice: str | None = None) -> Answer:
    """Home Assistant's async_get_tts_audio: one synthesize, read until audio-stop."""
    async with client(srv) as c:
        await c.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        return await read_until(c, AudioStop, Error)


async def ha_stream(srv: ServerThread, pieces: tuple[str, ...], voice: str | None = None,
                    then: Event | None = None) -> tuple[Answer, Answer | None]:
    """Home Assistant's async_stream_tts_audio: a writer task sends synthesize-start, the chunks, the whole text as a
    plain synthesize (for servers that do not stream), synthesize-stop, while the reader reads until
    synthesize-stopped. `then` is written afterwards on the same connection and its answer read too."""
    wy_voice = SynthesizeVoice(name=voice) if voice else None
    async with client(srv) as c:
        async def write() -> None:
            await c.write_event(SynthesizeStart(voice=wy_voice).event())
            message = ""
            for piece in pieces:
                message += piece
                await c.write_event(SynthesizeChunk(text=piece).event())
                await asyncio.sleep(0.01)
            await c.write_event(Synthesize(text=message, voice=wy_voice).event())
            await c.write_event(SynthesizeStop().event())

        writer = asyncio.create_task(write())
        answer = await read_until(c, SynthesizeStopped, Error)
        await writer
        after = None
        if then is not None:
            await c.write_event(then)
            after = Answer([await c.read_event()])
        return answer, after


async def websocket_audio(srv: ServerThread, text: str | None = None, pieces: tuple[str, ...] = (),
                          voice: str | None = None, sample_rate: int | None = None) -> bytes:
    """The pcm_s16le bytes the WebSocket sends for the same request (speak `text`, or start/text.../end)."""
    raw = await RawClient.connect(srv.url)
    extra = {"voice": voice} if voice else {}
    if sample_rate:
        extra["sample_rate"] = sample_rate
    try:
        if text is not None:
            await raw.send({"type": "speak", "id": "r", "text": text, "params": SAME, **extra})
        else:
            await raw.send({"type": "start", "id": "r", "params": SAME, **extra})
            for piece in pieces:
                await raw.send({"type": "text", "id": "r", "text": piece})
            await raw.send({"type": "end", "id": "r"})
        result = (await raw.until_done("r"))["r"]
        assert result.done is not None and result.done["reason"] == "end", result.done
        return b"".join(m["pcm"] for m in result.audio)
    finally:
        await raw.close()


def wait_disconnected(srv: ServerThread, count: float, timeout: float = 60.0) -> None:
    """Poll /metrics until `count` requests ended as "disconnected" and no engine stream is active."""
    deadline = time.monotonic() + timeout
    while True:
        gone = srv.metric("bark_requests_finished_total", 'reason="disconnected"')
        active = srv.metric("bark_active_streams")
        if gone >= count and active == 0:
            assert gone == count, gone
            return
        assert time.monotonic() < deadline, f"disconnected {gone} (want {count}), active streams {active}"
        time.sleep(0.05)  # polling interval, bounded by the deadline


# --- describe ------------------------------------------------------------------------------------------


def test_describe_lists_the_voices_and_streaming(server: ServerThread) -> None:
    async def go() -> Info:
        async with client(server) as c:
            await c.write_event(Describe().event())
            event = await c.read_event()
            assert event is not None and Info.is_type(event.type), event
            await c.write_event(Ping(text="still there?").event())
            pong = await c.read_event()
            assert pong is not None and Pong.from_event(pong).text == "still there?"
            return Info.from_event(event)

    info = run(go())
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.installed and program.name == "bark-stream"
    assert program.supports_synthesize_streaming is True
    names = [v.name for v in program.voices]
    assert names[0] == "default"  # the server's default voice (no --default-voice: no voice prompt), always first
    assert VOICE in names and len(names) == len(set(names))
    by_name = {v.name: v for v in program.voices}
    assert by_name[VOICE].languages == ["en"] and "English" in (by_name[VOICE].description or "")
    assert by_name["v2/de_speaker_1"].languages == ["de"]
    assert "en" in by_name["default"].languages and all(v.installed for v in program.voices)


def test_default_voice_is_listed_even_without_any_preset(engine, tmp_path: Path) -> None:  # noqa: F811
    empty = start_server(engine, wyoming_port=0, voices_dir=tmp_path, default_voice="v2/en_speaker_3")
    try:
        async def go() -> Info:
            async with client(empty) as c:
                await c.write_event(Describe().event())
                event = await c.read_event()
                assert event is not None
                return Info.from_event(event)

        voices = run(go()).tts[0].voices
        assert [v.name for v in voices] == ["v2/en_speaker_3"]
        assert voices[0].languages == ["en"] and (voices[0].description or "").startswith("Server default")
    finally:
        empty.stop()


# --- synthesize --------------------------------------------------------------------------------------------


def test_one_shot_synthesize_equals_the_websocket_audio(server: ServerThread) -> None:
    text = "Hello there. How are you today?"
    answer = run(one_shot(server, text, VOICE))
    assert answer.types()[0] == "audio-start" and answer.types()[-1] == "audio-stop"
    assert "synthesize-stopped" not in answer.types()  # only streams end with it
    start = answer.start
    assert (start.rate, start.width, start.channels) == (24_000, 2, 1)
    chunks = answer.chunks()
    assert chunks and all((c.rate, c.width, c.channels) == (24_000, 2, 1) for c in chunks)
    offsets = [c.timestamp for c in chunks]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert len(answer.audio) > 4_800  # over 0.1 s of s16 audio
    assert answer.audio == run(websocket_audio(server, text=text, voice=VOICE))


def test_streaming_synthesize_speaks_the_text_once(server: ServerThread) -> None:
    before = server.metric("bark_requests_total")
    answer, after = run(ha_stream(server, PIECES, VOICE, then=Describe().event()))
    types = answer.types()
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"], types
    assert types.count("audio-start") == 1 and "error" not in types
    # Home Assistant's in-stream `synthesize` was not spoken: one engine request, no second audio before the
    # answer to the next event, and the audio is exactly the WebSocket's for the same pieces (not twice as long).
    assert server.metric("bark_requests_total") == before + 1
    assert after is not None and Info.is_type(after.events[0].type)
    assert answer.audio == run(websocket_audio(server, pieces=PIECES, voice=VOICE))


def test_a_connection_serves_requests_one_after_another(server: ServerThread) -> None:
    async def go() -> tuple[Answer, Answer]:
        async with client(server) as c:
            await c.write_event(Synthesize(text="One.").event())
            await c.write_event(Synthesize(text="Two.").event())  # pipelined: served after the first, in order
            return await read_until(c, AudioStop), await read_until(c, AudioStop)

    first, second = run(go())
    for answer in (first, second):
        assert answer.types()[0] == "audio-start" and answer.types()[-1] == "audio-stop" and answer.audio


def test_sample_rate_is_the_servers_choice(engine) -> None:  # noqa: F811
    srv = start_server(engine, wyoming_port=0, wyoming_params=WYOMING_PARAMS, wyoming_sample_rate=16_000)
    try:
        text = "Hello there."
        answer = run(one_shot(srv, text))
        assert answer.start.rate == 16_000 and {c.rate for c in answer.chunks()} == {16_000}
        assert answer.audio == run(websocket_audio(srv, text=text, sample_rate=16_000))
    finally:
        srv.stop()


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("events", "code"), [
    ([Synthesize(text="Hello.", voice=SynthesizeVoice(name="no_such_voice")).event()], "unknown_voice"),
    ([SynthesizeStart(voice=SynthesizeVoice(name="../../etc/passwd")).event()], "unknown_voice"),
    ([Synthesize(text="   ").event()], "bad_field"),
    ([SynthesizeChunk(text="no stream open").event()], "bad_field"),
    ([SynthesizeStop().event()], "bad_field"),
    ([Synthesize(text="x" * 2001).event()], "text_too_long"),  # max_request_chars of the test limits
    ([SynthesizeStart().event(), SynthesizeChunk(text="y" * 1500).event(), SynthesizeChunk(text="y" * 600).event()],
     "text_too_long"),
    ([Synthesize(text="<speak>Hi</speak>", text_format="ssml").event()], "bad_field"),
])
def test_bad_input_gets_an_error_event_then_the_connection_closes(server: ServerThread, events: list[Event],
                                                                 code: str) -> None:
    async def go() -> Answer:
        async with client(server) as c:
            for event in events:
                await c.write_event(event)
            return await read_until(c)  # to the end: the server closes after the error

    answer = run(go())
    assert answer.types()[-1] == "error", answer.types()
    assert "audio-chunk" not in answer.types()
    error = answer.error
    assert error.code == code, error


def test_malformed_bytes_get_an_error_event(server: ServerThread) -> None:
    async def go(data: bytes) -> list[Event]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.server.wyoming_port)  # type: ignore[union-attr]
        writer.write(data)
        await writer.drain()
        events = []
        while (event := await async_read_event(reader)) is not None:
            events.append(event)
        writer.close()
        return events

    for data, code in ((b"this is not json\n", "bad_frame"),
                       (b'{"type": "synthesize", "data_length": 999999999}\n', "frame_too_large"),
                       (b'{"type": "synthesize", "data": {"text": 42}}\n', "bad_field"),
                       (b"[" * 100_000 + b"\n", "frame_too_large")):
        events = run(go(data))
        assert [e.type for e in events] == ["error"], (data[:40], events)
        assert Error.from_event(events[0]).code == code


def test_unknown_events_are_ignored(server: ServerThread) -> None:
    async def go() -> Event | None:
        async with client(server) as c:
            await c.write_event(Event(type="select-program", data={"name": "bark-stream"}))
            await c.write_event(Event(type="transcribe", data={}))
            await c.write_event(Describe().event())
            return await c.read_event()

    event = run(go())
    assert event is not None and Info.is_type(event.type)


# --- disconnects ----------------------------------------------------------------------------------------------


def test_a_disconnect_mid_stream_frees_the_engine_slot(server: ServerThread) -> None:
    gone_before = server.metric("bark_requests_finished_total", 'reason="disconnected"')
    long_text = " ".join(f"This is sentence number {i} of a long answer." for i in range(12))

    async def go() -> int:
        c = client(server)
        await c.connect()
        await c.write_event(SynthesizeStart().event())
        await c.write_event(SynthesizeChunk(text=long_text).event())  # no synthesize-stop: the text is still open
        answer = await read_until(c, AudioChunk)
        await c.disconnect()  # mid-stream, as a closed Home Assistant connection
        return len(answer.chunks())

    assert run(go()) == 1
    wait_disconnected(server, gone_before + 1)  # cancelled as the peer left: the engine slot is free again
    answer = run(one_shot(server, "Still serving."))  # and the server goes on
    assert answer.types()[-1] == "audio-stop"


def test_a_disconnect_with_text_still_open_cancels_at_once(server: ServerThread) -> None:
    """Nothing will ever be written for a stream waiting for the rest of its sentence: only the disconnect
    itself can end it."""
    gone_before = server.metric("bark_requests_finished_total", 'reason="disconnected"')

    async def go() -> None:
        c = client(server)
        await c.connect()
        await c.write_event(SynthesizeStart().event())
        await c.write_event(SynthesizeChunk(text="The rest of this sentence never").event())
        await c.write_event(Describe().event())  # answered once the chunk was taken
        assert Info.is_type((await c.read_event()).type)  # type: ignore[union-attr]
        await c.disconnect()

    run(go())
    wait_disconnected(server, gone_before + 1)


def test_a_one_shot_request_whose_peer_left_ends_at_its_next_write(server: ServerThread) -> None:
    gone_before = server.metric("bark_requests_finished_total", 'reason="disconnected"')
    long_text = " ".join(f"Sentence {i} is here." for i in range(30))

    async def go() -> None:
        c = client(server)
        await c.connect()
        await c.write_event(Synthesize(text=long_text).event())
        await read_until(c, AudioChunk)
        await c.disconnect()

    run(go())
    wait_disconnected(server, gone_before + 1)  # not "end": its writes failed and it was cancelled


# --- configuration ------------------------------------------------------------------------------------------


def test_config_checks_the_wyoming_options() -> None:
    with pytest.raises(ConfigError, match="wyoming_params: params.top_k"):
        ServerConfig(wyoming_port=0, wyoming_params=(("top_k", "50"),))
    with pytest.raises(ConfigError, match="wyoming_sample_rate"):
        ServerConfig(wyoming_port=0, wyoming_sample_rate=32_000)
    with pytest.raises(ConfigError, match="wyoming_zeroconf: .*loopback"):
        ServerConfig(wyoming_port=0, wyoming_zeroconf="")  # announcing 127.0.0.1 helps nobody
    assert ServerConfig(wyoming_port=10200, wyoming_host="0.0.0.0", wyoming_zeroconf="kitchen").wyoming_zeroconf == "kitchen"


def test_cli_refuses_bad_wyoming_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert server_main(["--offline", "--wyoming-port", "10200", "--wyoming-params", "[1, 2]"]) == 2
    assert "--wyoming-params: expected a JSON object" in capsys.readouterr().err
    assert server_main(["--offline", "--wyoming-port", "10200", "--wyoming-params", "{\"greedy\": 1}"]) == 2
    assert "--wyoming-params: params.greedy" in capsys.readouterr().err  # names the flag
