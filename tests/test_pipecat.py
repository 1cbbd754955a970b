"""The Pipecat service (client/pipecat.py) in real Pipecat pipelines against a running server: LLM text frames in,
audio frames out at the pipeline's rate, segment words as TTSTextFrames, an interruption that cancels its request
on the same socket, and a reconnect after the server restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from client.pipecat import BarkTTSService, segment_words
from server.config import ServerConfig
from streaming.voices import bundled_voices_dir
from tests.server_fixtures import PARAMS, TEST_LIMITS, ServerThread, engine, run, server  # noqa: F401

VOICE = "v2/en_speaker_6"
LONG_REPLY = " ".join(f"This is sentence number {i} of a reply that goes on for a while." for i in range(25))


class Sink(FrameProcessor):
    """The end of the pipeline: keeps every downstream frame and wakes whoever waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)

    async def wait(self, predicate: Callable[[list[Frame]], bool], timeout: float = 90.0) -> None:
        async def until() -> None:
            while not predicate(self.frames):
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), timeout)


@asynccontextmanager
async def pipeline(tts: BarkTTSService, rate: int):  # type: ignore[no-untyped-def]
    """A running pipeline [tts, sink] with audio out at `rate`; ended with an EndFrame on exit."""
    sink = Sink()
    worker = PipelineWorker(Pipeline([tts, sink]), params=PipelineParams(audio_out_sample_rate=rate),
                            cancel_on_idle_timeout=False, idle_timeout_secs=None)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(_worker: Any, _frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 30)
        yield worker, sink
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 60)


async def poll(fn: Callable[[], bool], timeout: float = 60.0) -> None:
    """Until fn() holds (fn may block: it reads /metrics), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(fn):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)  # polling interval, bounded by the deadline


def frames_of(frames: list[Frame], kind: type, context_id: str | None = None) -> list[Any]:
    return [f for f in frames if isinstance(f, kind) and (context_id is None or f.context_id == context_id)]


def test_segment_words_are_placed_inside_their_segment() -> None:
    words = segment_words("Hi there, you.", 1.0, 2.4)  # 14 characters over 1.4 s: words at offsets 0, 3, 10
    assert [w for w, _ in words] == ["Hi", "there,", "you."]
    assert [t for _, t in words] == pytest.approx([1.0, 1.3, 2.0])
    assert segment_words("   ", 0.0, 1.0) == []


def test_a_pipeline_speaks_llm_text_and_an_interruption_cancels_on_the_same_socket(server: ServerThread) -> None:
    async def go() -> None:
        tts = BarkTTSService(url=server.url, voice=VOICE, params=PARAMS)
        async with pipeline(tts, 16_000) as (worker, sink):
            assert tts.ready is not None and tts.ready["type"] == "ready"

            # Turn 1: an LLM reply streamed token by token.
            await worker.queue_frame(LLMFullResponseStartFrame())
            for token in ("Hello", " there.", " How", " are", " you", " today?"):
                await worker.queue_frame(LLMTextFrame(token))
            await worker.queue_frame(LLMFullResponseEndFrame())
            await sink.wait(lambda fs: bool(frames_of(fs, TTSStoppedFrame)))
            started = frames_of(sink.frames, TTSStartedFrame)
            assert len(started) == 1
            context = started[0].context_id
            audio = frames_of(sink.frames, TTSAudioRawFrame, context)
            assert audio and all(f.sample_rate == 16_000 and f.num_channels == 1 for f in audio)
            assert sum(len(f.audio) for f in audio) > 16_000  # over half a second of s16 at 16 kHz
            assert sink.frames.index(started[0]) < sink.frames.index(audio[0])
            assert all(len(f.audio) % 2 == 0 for f in audio)
            words = " ".join(f.text for f in frames_of(sink.frames, TTSTextFrame))
            assert "Hello" in words and "today" in words, words  # the segments, word by word

            # Turn 2: a long reply, interrupted once its audio plays.
            cancelled = server.metric("bark_requests_finished_total", 'reason="cancelled"')
            socket = tts._websocket
            seen = len(sink.frames)
            await worker.queue_frame(LLMFullResponseStartFrame())
            await worker.queue_frame(LLMTextFrame(LONG_REPLY))
            await sink.wait(lambda fs: bool(frames_of(fs[seen:], TTSAudioRawFrame)))
            interrupted = frames_of(sink.frames[seen:], TTSAudioRawFrame)[0].context_id
            assert interrupted != context
            await worker.queue_frame(InterruptionFrame())
            await poll(lambda: server.metric("bark_requests_finished_total", 'reason="cancelled"') == cancelled + 1)
            assert tts._websocket is socket and tts.connections_opened == 1  # cancelled, not reconnected
            assert server.metric("bark_connections") == 1

            # The same socket serves the next turn.
            seen = len(sink.frames)
            await worker.queue_frame(TTSSpeakFrame("Back again."))
            await sink.wait(lambda fs: bool(frames_of(fs[seen:], TTSStoppedFrame)))
            assert frames_of(sink.frames[seen:], TTSAudioRawFrame) and tts.connections_opened == 1

    run(go(), timeout=240)


def test_a_rate_the_server_does_not_send_is_resampled_here(server: ServerThread) -> None:
    async def go() -> list[TTSAudioRawFrame]:
        tts = BarkTTSService(url=server.url, params=PARAMS)
        async with pipeline(tts, 32_000) as (worker, sink):
            await worker.queue_frame(TTSSpeakFrame("Hello there."))
            await sink.wait(lambda fs: bool(frames_of(fs, TTSStoppedFrame)))
            return frames_of(sink.frames, TTSAudioRawFrame)

    audio = run(go())
    assert audio and {f.sample_rate for f in audio} == {32_000}


@pytest.fixture()
def restartable(engine) -> Iterator[list[ServerThread]]:  # noqa: F811
    """A server on a fixed port that a test can stop and start again (the list holds the live one)."""
    servers: list[ServerThread] = []
    yield servers
    for srv in servers:
        srv.stop()


def _server_on(engine: Any, port: int) -> ServerThread:  # noqa: F811
    config = ServerConfig(host="127.0.0.1", port=port, model="random-tiny", codec="random", offline=True,
                          limits=TEST_LIMITS, voices_dir=bundled_voices_dir())
    return ServerThread(engine, config).start()


def test_the_service_reconnects_after_a_server_restart(engine, restartable: list[ServerThread]) -> None:  # noqa: F811
    first = _server_on(engine, 0)
    restartable.append(first)
    port = first.port

    async def go() -> int:
        # attempts at about 0, 1 and 3 s: the new server is listening well within that
        tts = BarkTTSService(url=first.url, params=PARAMS, reconnect_backoff_min_wait=1.0,
                             reconnect_backoff_max_wait=2.0)
        async with pipeline(tts, 24_000) as (worker, sink):
            await worker.queue_frame(TTSSpeakFrame("Before."))
            await sink.wait(lambda fs: bool(frames_of(fs, TTSStoppedFrame)))
            await asyncio.to_thread(first.stop)  # closes with 1001 (shutting_down): worth a reconnect
            restartable.remove(first)
            second = await asyncio.to_thread(_server_on, engine, port)
            restartable.append(second)
            # connected to the new server (a reconnect may first land on the old one while it closes)
            await poll(lambda: second.metric("bark_connections") == 1 and tts.ready is not None, timeout=30)
            seen = len(sink.frames)
            await worker.queue_frame(TTSSpeakFrame("After."))
            await sink.wait(lambda fs: bool(frames_of(fs[seen:], TTSStoppedFrame)))
            assert frames_of(sink.frames[seen:], TTSAudioRawFrame)
            return tts.connections_opened

    assert run(go(), timeout=180) >= 2


def test_several_urls_connect_to_one_that_answers_and_fail_over_when_it_stops(engine) -> None:  # noqa: F811
    """url=[nothing listening, A, B]: the service connects to A; when A stops it reconnects to the next that
    answers (B, after trying A again), and speaks there."""
    import socket

    with socket.socket() as probe:  # a port with nothing listening on it
        probe.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{probe.getsockname()[1]}/v1/stream"
    a, b = _server_on(engine, 0), _server_on(engine, 0)
    a_url, b_url = a.url, b.url
    try:
        async def go() -> tuple[str, str, int]:
            tts = BarkTTSService(url=[dead, a_url, b_url], params=PARAMS, reconnect_backoff_min_wait=0.5,
                                 reconnect_backoff_max_wait=1.0)
            async with pipeline(tts, 24_000) as (worker, sink):
                first = tts.url
                await worker.queue_frame(TTSSpeakFrame("On the first replica."))
                await sink.wait(lambda fs: bool(frames_of(fs, TTSStoppedFrame)))
                await asyncio.to_thread(a.stop)  # closes with 1001: worth a reconnect, which lands on B
                await poll(lambda: b.metric("bark_connections") == 1, timeout=30)
                seen = len(sink.frames)
                await worker.queue_frame(TTSSpeakFrame("On the second."))
                await sink.wait(lambda fs: bool(frames_of(fs[seen:], TTSStoppedFrame)))
                assert frames_of(sink.frames[seen:], TTSAudioRawFrame)
                return first, tts.url, tts.connections_opened

        first, second, opened = run(go(), timeout=180)
        assert (first, second) == (a_url, b_url) and opened >= 2
        assert b.metric("bark_requests_finished_total", 'reason="end"') == 1
    finally:
        b.stop()
        if a.server is not None and a.loop is not None and not a.loop.is_closed():
            a.stop()


def test_a_url_list_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="url"):
        BarkTTSService(url=[])
