"""EngineProcess: the engine in its own process behaves, from the caller's side, like LocalEngine.

One engine process (random-tiny, max_streams 2, max_queue 2) serves the module; the
kill test starts its own. The link lives on an event loop in a background thread
(`LoopThread`), so the module-scoped process outlives each test's coroutine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from server.enginelink.base import EngineRequest
from server.enginelink.process import EngineProcess, ProcessStream
from streaming.errors import EngineOverloaded, TextError, WeightsError
from streaming.events import AudioChunk, Event, SegmentSpan, StreamDone
from streaming.params import SamplingParams

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "tests" / "data" / "tokenizer"
LOAD: dict[str, Any] = dict(model="random-tiny", device="cpu", dtype="float32", codec="random",
                            tokenizer=str(TOKENIZER_DIR))
CONFIG = {"max_streams": 2, "max_queue": 2}
SAMPLING = SamplingParams(greedy=True, max_semantic_tokens=24)
TEXT = "Hello there. How are you today?"
TIMEOUT = 120.0  # any one test's coroutine (a hang guard, not a synchronisation)
DEATH_BOUND = 5.0  # how long the events of a dead process may take to arrive (a hang guard)


class LoopThread:
    """An event loop in a daemon thread; `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = TIMEOUT) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)
        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> LoopThread:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def link(loop: LoopThread) -> EngineProcess:
    engine = loop.run(EngineProcess.start({**LOAD, "engine_config": CONFIG}), 600)
    yield engine
    loop.run(engine.close())


def request(text: str | None = TEXT, **kw: Any) -> EngineRequest:
    return EngineRequest(text=text, sampling=SAMPLING, **kw)


async def collect(stream) -> list[Event]:
    return [event async for event in stream]


async def next_event(stream: ProcessStream, kind: type, bound: float = TIMEOUT) -> list[Event]:
    """Events up to and including the first of `kind` (fails on StreamDone first)."""
    events: list[Event] = []
    it = stream.__aiter__()
    while True:
        event = await asyncio.wait_for(it.__anext__(), bound)
        events.append(event)
        if isinstance(event, kind):
            return events
        assert not isinstance(event, StreamDone), f"ended before a {kind.__name__}: {event}"


async def until(condition: Callable[[], bool], what: str, bound: float = 30.0) -> None:
    """Wait until `condition()` holds (it reads state the child pushes); fail after `bound` s."""
    deadline = asyncio.get_running_loop().time() + bound
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def pcm(events: list[Event]) -> np.ndarray:
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [c.sample for c in chunks] == list(np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]))
    return np.concatenate([c.samples for c in chunks])


# ------------------------------------------------------------------------------ same results


def test_greedy_request_matches_local_engine(loop: LoopThread, link: EngineProcess) -> None:
    """A greedy request gives the same audio, segments and StreamDone through the process as in process.

    Tokens, spans, sample counts and reasons are compared exactly; PCM bitwise too: both
    engines run the same code on the same seeded weights with the same thread count on the
    same CPU, and the channel carries float32 bytes unchanged."""
    from server.enginelink.local import LocalEngine
    from streaming.bundle import load_engine
    from streaming.engine import EngineConfig

    local = load_engine(**LOAD, config=EngineConfig(**CONFIG))
    local.start()
    try:
        want = loop.run(collect(loop.run(LocalEngine(local).submit(request()))))
    finally:
        local.stop()
    got = loop.run(collect(loop.run(link.submit(request()))))
    spans = lambda events: [e for e in events if isinstance(e, SegmentSpan)]  # noqa: E731
    assert spans(got) == spans(want) and spans(got)
    done, want_done = got[-1], want[-1]
    assert isinstance(done, StreamDone) and done.reason == want_done.reason == "end"
    assert done.samples == want_done.samples and done.error_code is None
    assert done.stats.tokens == want_done.stats.tokens and done.stats.samples == want_done.stats.samples
    assert set(done.stats.stage_s) == set(want_done.stats.stage_s) and done.stats.first_s.keys() == want_done.stats.first_s.keys()
    assert np.array_equal(pcm(got), pcm(want))


# ------------------------------------------------------------------------------ calls and controls


def test_piecewise_feed_flush_end(loop: LoopThread, link: EngineProcess) -> None:
    """Text sent through feed, flush and end is spoken segment by segment and the stream ends normally."""
    async def go() -> list[Event]:
        stream = await link.submit(request(None))
        await stream.feed("Hello there. ")
        await stream.feed("How are")
        await stream.flush()
        await stream.feed(" you today?")
        await stream.end()
        await stream.end()  # idempotent, as on a handle
        return await collect(stream)

    events = loop.run(go())
    assert [s.text for s in events if isinstance(s, SegmentSpan)] == ["Hello there.", "How are", "you today?"]
    assert isinstance(events[-1], StreamDone) and events[-1].reason == "end"
    assert events[-1].samples == len(pcm(events)) > 0


def test_text_errors_arrive_as_text_error(loop: LoopThread, link: EngineProcess) -> None:
    """An empty text at submit and a feed after end raise TextError, with the local engine's messages."""
    with pytest.raises(TextError, match="^text: is empty$"):
        loop.run(link.submit(request("   ")))

    async def feed_after_end() -> None:
        stream = await link.submit(request(None))
        await stream.end()
        try:
            with pytest.raises(TextError, match="already ended"):
                await stream.feed("More.")
        finally:
            await collect(stream)

    loop.run(feed_after_end())
    with pytest.raises(TextError, match="lone surrogate"):  # refused before the channel, as the handle would
        loop.run(link.submit(request("bad \ud800 text")))


def test_overload_raises_engine_overloaded(loop: LoopThread, link: EngineProcess) -> None:
    """With every slot held and the admission queue full, submit raises EngineOverloaded with retry_after_ms."""
    async def go() -> None:
        streams = []
        try:
            for _ in range(CONFIG["max_streams"]):  # paused before their text: admitted, never finished
                stream = await link.submit(request(None))
                streams.append(stream)
                stream.pause()
                await stream.feed("Hold this slot.")
                await stream.flush()
            await until(lambda: link.snapshot().active == CONFIG["max_streams"], "the paused streams' admission")
            for _ in range(CONFIG["max_queue"]):  # no text yet: they wait in the queue
                streams.append(await link.submit(request(None)))
            with pytest.raises(EngineOverloaded, match="admission queue is full") as info:
                await link.submit(request())
            assert isinstance(info.value.retry_after_ms, int) and info.value.retry_after_ms > 0
        finally:
            for stream in streams:
                stream.cancel()
            dones = [(await collect(stream))[-1] for stream in streams]
        assert {d.reason for d in dones} == {"cancelled"}

    loop.run(go())
    assert link.healthy


def test_cancel_ends_with_cancelled(loop: LoopThread, link: EngineProcess) -> None:
    """Cancel after the first audio ends the stream with reason "cancelled" (its text had not ended)."""
    async def go() -> StreamDone:
        stream = await link.submit(request(None))
        await stream.feed("Hello there.")
        await stream.flush()
        await next_event(stream, AudioChunk)
        stream.cancel()
        stream.cancel()  # idempotent
        return (await collect(stream))[-1]

    done = loop.run(go())
    assert done.reason == "cancelled" and done.error_code is None


def test_pause_stops_progress_and_resume_continues(loop: LoopThread, link: EngineProcess) -> None:
    """A stream paused before its text gets no event while another stream runs from start to end; resumed, it ends.

    The pause frame goes out before the feed's, so the child pauses the handle before the text
    exists; the other stream's StreamDone comes through the same ordered channel, after any
    event the paused one could have had."""
    async def go() -> None:
        paused = await link.submit(request(None))
        paused.pause()
        await paused.feed(TEXT)
        await paused.end()
        await until(lambda: link.snapshot().paused == 1, "the pause to show in the snapshot")
        other = await collect(await link.submit(request()))
        assert other[-1].reason == "end"
        assert paused._state.queue.empty(), "the paused stream made progress"
        paused.resume()
        events = await collect(paused)
        assert events[-1].reason == "end" and events[-1].samples > 0
        assert [s.text for s in events if isinstance(s, SegmentSpan)] == ["Hello there.", "How are you today?"]

    loop.run(go())


# ------------------------------------------------------------------------------ failures


def test_killed_process_fails_everything_in_flight(loop: LoopThread) -> None:
    """SIGKILL of the child: every stream in flight ends error/internal, a pending call and later submits
    raise EngineOverloaded, healthy turns False and wait_failed returns."""
    async def go() -> None:
        link = await EngineProcess.start({**LOAD, "engine_config": CONFIG}, timeout=600)
        try:
            speaking = []
            for text in ("Hello there.", "How are you?"):  # text not ended: in flight until told otherwise
                stream = await link.submit(request(None))
                await stream.feed(text)
                await stream.flush()
                speaking.append(stream)
            waiting = await link.submit(request(None))  # queued: no text yet
            await next_event(speaking[0], AudioChunk)  # mid-stream
            os.kill(link.pid, signal.SIGSTOP)  # it cannot answer: the feed below stays pending
            pending = asyncio.ensure_future(speaking[1].feed("More text."))
            await asyncio.sleep(0)  # let the feed send its frame (its future then waits for the reply)
            assert not pending.done()
            os.kill(link.pid, signal.SIGKILL)
            for stream in [*speaking, waiting]:
                events = await asyncio.wait_for(collect(stream), DEATH_BOUND)
                done = events[-1]
                assert isinstance(done, StreamDone) and done.reason == "error" and done.error_code == "internal"
                assert done.error.startswith("the engine process died") and "SIGKILL" in done.error
            with pytest.raises(EngineOverloaded, match=r"process died") as info:
                await asyncio.wait_for(pending, DEATH_BOUND)
            assert info.value.retry_after_ms == 5000
            assert not link.healthy
            await asyncio.wait_for(link.wait_failed(), DEATH_BOUND)
            with pytest.raises(EngineOverloaded, match=r"^engine: not accepting requests \(process died\)$"):
                await link.submit(request())
        finally:
            await link.close()
            await link.close()  # safe twice

    loop.run(go(), 600)


def test_close_ends_streams_in_flight_like_engine_stop(loop: LoopThread) -> None:
    """close() stops the child: streams in flight end "cancelled" with code shutting_down (as Engine.stop ends
    them), later submits raise EngineOverloaded, and a second close() is harmless."""
    async def go() -> None:
        link = await EngineProcess.start({**LOAD, "engine_config": CONFIG}, timeout=600)
        speaking = await link.submit(request(None))
        await speaking.feed("Hello there.")
        await speaking.flush()
        waiting = await link.submit(request(None))
        await next_event(speaking, AudioChunk)
        await link.close()
        for stream in (speaking, waiting):
            done = (await asyncio.wait_for(collect(stream), DEATH_BOUND))[-1]
            assert (done.reason, done.error_code, done.error) == ("cancelled", "shutting_down", "engine stopped")
        assert not link.healthy
        with pytest.raises(EngineOverloaded, match="stopped"):
            await link.submit(request())
        await link.close()

    loop.run(go(), 600)


def test_weights_error_reaches_the_parent(tmp_path: Path) -> None:
    """A model directory without weights fails in the child and is raised in the parent as WeightsError,
    with the message the in-process load gives."""
    from streaming.weights import load_models

    with pytest.raises(WeightsError) as local:
        load_models(str(tmp_path), device="cpu", dtype="float32")
    with pytest.raises(WeightsError) as remote:
        asyncio.run(EngineProcess.start({**LOAD, "model": tmp_path}, timeout=600))
    assert str(remote.value) == str(local.value) and "holds no Bark checkpoint" in str(remote.value)


def test_front_end_process_imports_no_torch() -> None:
    """A process that starts an EngineProcess and runs a request through it never imports torch."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        from server.enginelink import EngineProcess, EngineRequest
        from streaming.events import StreamDone
        from streaming.params import SamplingParams

        async def main():
            link = await EngineProcess.start({LOAD!r}, timeout=600)
            try:
                stream = await link.submit(EngineRequest(text="Hello.", sampling=SamplingParams(
                    greedy=True, max_semantic_tokens=8)))
                events = [e async for e in stream]
            finally:
                await link.close()
            assert isinstance(events[-1], StreamDone) and events[-1].reason == "end", events[-1]
            assert "torch" not in sys.modules, "the front-end process imported torch"
            print("ok, no torch")

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok, no torch"
