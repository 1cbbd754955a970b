"""Engine behaviour: concurrency equals isolation, cancel frees slots, admission queues, piecewise text, faults stay local."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from audio_checks import assert_same_audio
from streaming.engine import EngineOverloaded
from streaming.errors import TextError
from streaming.events import AudioChunk, StreamDone
from streaming.params import SamplingParams, StreamPolicy
from streaming.stream import SpeechRequest

from engine_fixtures import make_engine, run, tiny_parts, voice


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture(scope="module")
def engine(parts):
    eng = make_engine(parts, max_streams=4, max_queue=8)
    yield eng
    eng.stop()


def req(text: str, n: int, v=None, **kw) -> SpeechRequest:
    return SpeechRequest(text=text, voice=v, sampling=SamplingParams(greedy=True, max_semantic_tokens=n),
                         return_tokens=True, **kw)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def collect(handle):
    events = list(handle.events(timeout=120))
    audio = [e.samples for e in events if isinstance(e, AudioChunk)]
    return (np.concatenate(audio) if audio else np.zeros(0, np.float32)), events[-1]


def test_concurrent_streams_equal_solo_runs(engine):
    """Streams of different lengths and voices run together give each exactly its solo tokens and audio."""
    requests = [req("Hello there.", 25), req("A somewhat longer sentence to speak.", 60, voice()),
                req("Short one.", 15, voice("v2/de_speaker_1")),
                req("Another voice, another length, and a sliding fine window.", 45, voice("announcer"))]
    solo = [run(engine, r) for r in requests]
    handles = [engine.submit(r) for r in requests]
    together = [collect(h) for h in handles]
    for (audio, _, _, done), (audio2, done2) in zip(solo, together):
        assert done2.reason == "end"
        for a, b in zip(done.tokens, done2.tokens):
            assert np.array_equal(a.semantic, b.semantic)
            assert np.array_equal(a.coarse, b.coarse)
            assert np.array_equal(a.fine, b.fine)
        assert_same_audio(audio2, audio)  # tokens identical; samples decoded in a batch


def test_cancel_mid_stream_frees_slots_and_spares_others(engine):
    """Cancelling one stream ends it with 'cancelled', frees its KV slots, and the neighbour is unchanged."""
    other = req("The neighbour keeps talking.", 50)
    solo_audio = run(engine, other)[0]
    victim = engine.submit(req("This one will be cut short before it ends.", 200))
    neighbour = engine.submit(other)
    for event in victim.events(timeout=60):
        if isinstance(event, AudioChunk):
            victim.cancel()
            break
    rest = list(victim.events(timeout=60))
    assert isinstance(rest[-1], StreamDone) and rest[-1].reason == "cancelled"
    audio, done = collect(neighbour)
    assert done.reason == "end"
    assert_same_audio(audio, solo_audio)
    assert wait_until(lambda: engine.snapshot().active == 0)
    assert engine.semantic.free_slots() == engine.coarse.free_slots() == engine.config.max_streams
    assert engine.coarse.cache.n_free == engine.coarse.cache.n_slots  # window and prefix slots all returned


def test_admission_beyond_capacity_queues(parts):
    """With one stream slot, later requests queue and all complete; past max_queue submit raises overloaded."""
    eng = make_engine(parts, max_streams=1, max_queue=2)
    try:
        holder = eng.submit(req("I hold the slot for a long while.", 768))  # busy until cancelled
        assert wait_until(lambda: eng.snapshot().active == 1)
        handles = [eng.submit(req(f"Request number {i}.", 10)) for i in range(2)]
        assert eng.snapshot().queued == 2
        with pytest.raises(EngineOverloaded) as info:
            eng.submit(req("One too many.", 10))
        assert info.value.retry_after_ms > 0
        holder.cancel()
        dones = [collect(h)[1] for h in [holder, *handles]]
        assert [d.reason for d in dones] == ["cancelled", "end", "end"]
        assert dones[2].stats.queued_s > 0
    finally:
        eng.stop()


def test_requests_without_text_hold_no_slot(parts):
    """Piecewise requests that sent no text yet wait outside the active set: with every slot's worth of them
    open, a request with text still runs at once; they are admitted when their text comes."""
    eng = make_engine(parts, max_streams=2, max_queue=8)
    try:
        idle = [eng.submit(SpeechRequest(text=None, sampling=SamplingParams(greedy=True, max_semantic_tokens=8)))
                for _ in range(4)]
        busy = eng.submit(req("I have text.", 10))
        audio, done = collect(busy)
        assert done.reason == "end" and len(audio) > 0
        snap = eng.snapshot()
        assert snap.active == 0 and snap.queued == 4
        for h in idle:
            h.feed("Now I speak.")
            h.end()
        assert [collect(h)[1].reason for h in idle] == ["end"] * 4
    finally:
        eng.stop()


def test_piecewise_text_feed_flush_end(engine):
    """Text fed in pieces becomes a segment per completed sentence; flush cuts mid-sentence; end finishes."""
    h = engine.submit(SpeechRequest(text=None, sampling=SamplingParams(greedy=True, max_semantic_tokens=12),
                                    return_tokens=True))

    def texts():
        stream = engine._active.get(h.id)
        return [s.text for s in stream.segments] if stream else None

    for piece in ["Hel", "lo the", "re. How "]:
        h.feed(piece)
    assert wait_until(lambda: texts() == ["Hello there."])
    for piece in ["are you", " today? I am", " fine"]:
        h.feed(piece)
    assert wait_until(lambda: texts() == ["Hello there.", "How are you today?"])
    h.flush()
    assert wait_until(lambda: texts() == ["Hello there.", "How are you today?", "I am fine"])
    h.feed(" and you")
    h.end()
    with pytest.raises(TextError):
        h.feed("more")
    audio, done = collect(h)
    assert done.reason == "end" and len(audio) == done.samples > 0
    assert [s.text for s in done.tokens] == ["Hello there.", "How are you today?", "I am fine", "and you"]


def test_empty_text_rejected(engine):
    """Whole-text requests with nothing to say are refused at submit with TextError naming `text`."""
    with pytest.raises(TextError, match="text"):
        engine.submit(SpeechRequest(text="   \n"))


def test_text_that_is_not_valid_unicode_is_refused_and_the_request_goes_on(engine):
    """A lone surrogate (which JSON can carry as \\ud800) is refused with TextError naming `text` and the
    character, at submit and at feed; a piecewise request keeps what it had and still ends normally."""
    with pytest.raises(TextError, match="text: character 6 is a lone surrogate"):
        engine.submit(SpeechRequest(text="Hello \ud800 there.", sampling=SamplingParams(greedy=True,
                                                                                        max_semantic_tokens=8)))
    h = engine.submit(SpeechRequest(text=None, sampling=SamplingParams(greedy=True, max_semantic_tokens=8),
                                    return_tokens=True))
    h.feed("Hello there.")
    with pytest.raises(TextError, match="U\\+DFFF"):
        h.feed(" Bad \udfff.")
    h.end()
    audio, done = collect(h)
    assert done.reason == "end" and [s.text for s in done.tokens] == ["Hello there."]


def test_fault_in_one_stream_ends_only_that_stream(engine, monkeypatch):
    """An exception in one stream's coarse step ends it with error 'internal'; a concurrent stream completes."""
    from streaming.stages.coarse import CoarseStage

    real = CoarseStage._accept_row
    victim_gen: list = []

    def faulty(self, seg, token):
        if seg.generator in victim_gen:
            raise RuntimeError("injected fault")
        return real(self, seg, token)

    healthy_req = req("Healthy stream here.", 30)
    expected = run(engine, healthy_req)[0]
    monkeypatch.setattr(CoarseStage, "_accept_row", faulty)
    bad = engine.submit(req("This stream breaks.", 30))
    good = engine.submit(healthy_req)
    assert wait_until(lambda: bool(engine._active.get(bad.id) and engine._active[bad.id].segments))
    victim_gen.append(engine._active[bad.id].segments[0].generator)
    _, bad_done = collect(bad)
    audio, good_done = collect(good)
    assert bad_done.reason == "error" and bad_done.error_code == "internal"
    assert good_done.reason == "end"
    assert_same_audio(audio, expected)
    assert engine.healthy


def test_pause_stops_compute_and_resume_finishes(engine):
    """A paused stream makes no progress until resumed (the tick in flight may finish), then completes."""
    h = engine.submit(req("Pause me in the middle please.", 40))
    first = next(iter(h.events(timeout=60)))
    h.pause()
    stream = engine._active[h.id]

    def progress():
        return (sum(len(s.semantic) for s in stream.segments), sum(len(s.coarse) for s in stream.segments),
                sum(s.fine.shape[1] for s in stream.segments))

    def settled() -> bool:  # two reads 0.1 s apart agree: the tick that was in flight is over
        before = progress()
        time.sleep(0.1)
        return progress() == before

    assert wait_until(settled) and engine.snapshot().paused == 1
    before = progress()
    time.sleep(0.3)  # a window in which an unpaused stream would certainly advance
    assert progress() == before
    h.resume()
    _, done = collect(h)
    assert isinstance(first, AudioChunk)
    assert done.reason == "end"


def test_async_iteration(engine):
    """The handle is an async iterator when submitted with a loop; events arrive in order ending with done."""
    import asyncio

    async def main():
        h = engine.submit(req("Async hello.", 15), loop=asyncio.get_running_loop())
        return [e async for e in h]

    events = asyncio.run(main())
    assert isinstance(events[-1], StreamDone) and events[-1].reason == "end"
    assert sum(len(e.samples) for e in events if isinstance(e, AudioChunk)) == events[-1].samples


def test_engine_stop_ends_streams(parts):
    """stop() ends in-flight streams (cancelled, code shutting_down) and the engine reports unhealthy."""
    eng = make_engine(parts, max_streams=2)
    h = eng.submit(req("A long request that will not finish.", 300))
    threading.Timer(0.2, eng.stop).start()
    _, done = collect(h)
    assert done.reason in ("cancelled", "end")
    assert wait_until(lambda: not eng.healthy)
