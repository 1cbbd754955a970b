"""Parking: a piecewise stream whose text has run out (every segment spoken, more text may come) gives its
engine slot back until its next text, cancel or end arrives, then goes on exactly as if it had never left."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine_fixtures import make_engine, tiny_parts, voice
from streaming.engine import Engine, EngineOverloaded
from streaming.events import AudioChunk, EngineSnapshot, SegmentSpan, StreamDone
from streaming.params import SamplingParams
from streaming.stream import SpeechRequest, StreamHandle

SEEDED = SamplingParams(seed=1234, max_semantic_tokens=12)  # sampled: every segment's generator is exercised
GREEDY = SamplingParams(greedy=True, max_semantic_tokens=12)
FIRST, SECOND = "Hello there.", "How are you today?"
TIMEOUT = 60.0  # hang guard for any one wait


@pytest.fixture(scope="module")
def parts():
    return tiny_parts()


@pytest.fixture
def engines(parts):
    """make(**config) -> a started engine, stopped after the test."""
    made: list[Engine] = []

    def make(**config) -> Engine:
        made.append(make_engine(parts, **config))
        return made[-1]

    yield make
    for eng in made:
        eng.stop()


def piecewise(eng: Engine, sampling: SamplingParams = SEEDED, **kw) -> StreamHandle:
    return eng.submit(SpeechRequest(text=None, sampling=sampling, return_tokens=True, **kw))


def say(h: StreamHandle, text: str) -> None:
    """Give a piecewise stream one whole sentence now (not ended)."""
    h.feed(text)
    h.flush()


def until_span(h: StreamHandle) -> list:
    """The events up to and including the next segment span (that segment's audio is all out)."""
    events = []
    for event in h.events(timeout=TIMEOUT):
        events.append(event)
        if isinstance(event, SegmentSpan):
            return events
        assert not isinstance(event, StreamDone), event
    raise AssertionError("no span")


def until_done(h: StreamHandle) -> list:
    return list(h.events(timeout=TIMEOUT))


def snapshot_when(eng: Engine, pred) -> EngineSnapshot:
    """The first snapshot that satisfies pred (polled; the deadline only guards against a hang)."""
    deadline = time.monotonic() + TIMEOUT
    while not pred(snap := eng.snapshot()):
        assert time.monotonic() < deadline, f"engine never reached the state: {snap}"
        time.sleep(0.005)
    return snap


def parked(eng: Engine, n: int) -> EngineSnapshot:
    return snapshot_when(eng, lambda s: s.waiting_text == n)


def audio(events: list) -> np.ndarray:
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def assert_consistent(events: list) -> StreamDone:
    """Chunks are consecutive, the done count is what was handed out, the last span ends there."""
    done = events[-1]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [c.sample for c in chunks] == list(np.cumsum([0] + [len(c.samples) for c in chunks[:-1]]))
    assert done.samples == done.stats.samples == len(audio(events)) > 0
    return done


def assert_slots_free(eng: Engine) -> None:
    n = eng.config.max_streams
    assert eng.semantic.free_slots() == eng.coarse.free_slots() == n
    assert eng.coarse.main_held == eng.coarse.prefix_held == 0
    spare = 1 if eng.config.static_shapes else 0  # a static-step scratch slot, held for the engine's life
    assert eng.semantic.cache.n_free == eng.semantic.cache.n_slots - spare
    assert eng.coarse.cache.n_free == eng.coarse.cache.n_slots - spare  # window and prefix slots all back


def test_spoken_out_streams_park_and_a_whole_request_runs_past_them(engines):
    """max_streams 2: two piecewise streams that said one sentence and did not end give both slots back once
    their audio is out (every KV slot returned); a third, whole-text request then runs to its end while they
    stay parked, and they still end normally afterwards."""
    eng = engines(max_streams=2, max_queue=8)
    a, b = piecewise(eng), piecewise(eng)
    say(a, FIRST)
    say(b, SECOND)
    until_span(a)
    until_span(b)
    third = eng.submit(SpeechRequest(text="I run while they wait.", sampling=SEEDED))
    assert until_done(third)[-1].reason == "end"
    snap = eng.snapshot()
    assert (snap.active, snap.queued, snap.waiting_text) == (0, 0, 2)
    assert_slots_free(eng)
    assert eng.counters.parks == 2
    a.end()
    b.end()
    assert [until_done(h)[-1].reason for h in (a, b)] == ["end", "end"]
    assert eng.snapshot() == EngineSnapshot(0, 0, 0, waiting_text=0)


@pytest.mark.parametrize("sampling, preset", [(SEEDED, None), (GREEDY, "v2/en_speaker_6")],
                         ids=["seeded-own-voice", "greedy-preset"])
def test_parked_stream_goes_on_as_if_it_never_left(engines, sampling, preset):
    """A stream parked after its first sentence, then fed a second one and ended, hands out bitwise the same
    PCM, spans and semantic/coarse/fine tokens as the same two sentences given without a pause (the first
    segment's voice, per-segment seeds and the crossfade of the held tail all carry over); its queued_s and
    ttfa are from before the pause."""
    eng = engines(max_streams=2, max_queue=8)
    v = None if preset is None else voice(preset)

    ref = piecewise(eng, sampling, voice=v)
    say(ref, FIRST)
    ref.feed(SECOND)
    ref.end()
    want = until_done(ref)
    assert eng.counters.parks == 0  # the reference really ran without a pause

    t0 = time.perf_counter()
    h = piecewise(eng, sampling, voice=v)
    say(h, FIRST)
    first = until_span(h)
    parked(eng, 1)
    t_parked = time.perf_counter()
    assert eng.snapshot().active == 0
    h.feed(SECOND)
    h.end()
    got = first + until_done(h)
    assert eng.counters.parks == 1

    done, ref_done = assert_consistent(got), assert_consistent(want)
    assert done.reason == ref_done.reason == "end"
    assert np.array_equal(audio(got), audio(want))
    assert [e for e in got if isinstance(e, SegmentSpan)] == [e for e in want if isinstance(e, SegmentSpan)]
    assert [t.text for t in done.tokens] == [FIRST, SECOND]
    for a, b in zip(done.tokens, ref_done.tokens, strict=True):
        assert np.array_equal(a.semantic, b.semantic)
        assert np.array_equal(a.coarse, b.coarse)
        assert np.array_equal(a.fine, b.fine)
    assert done.stats.queued_s < t_parked - t0 and done.stats.ttfa_s < t_parked - t0
    assert done.stats.tokens["segments"] == 2


def test_end_on_a_parked_stream_flushes_its_tail(engines):
    """end() on a parked stream ends it 'end' with the held crossfade tail handed out: the same samples, count
    and span as a stream that said the sentence and ended at once."""
    eng = engines(max_streams=2, max_queue=8)
    ref = piecewise(eng)
    say(ref, FIRST)
    ref.end()
    want = until_done(ref)

    h = piecewise(eng)
    say(h, FIRST)
    first = until_span(h)
    parked(eng, 1)
    assert len(audio(first)) < assert_consistent(want).samples  # the tail was held back while parked
    h.end()
    got = first + until_done(h)
    done = assert_consistent(got)
    assert done.reason == "end" and done.samples == want[-1].samples
    assert np.array_equal(audio(got), audio(want))
    assert [e for e in got if isinstance(e, SegmentSpan)] == [e for e in want if isinstance(e, SegmentSpan)]
    assert eng.snapshot() == EngineSnapshot(0, 0, 0, waiting_text=0)


def test_cancel_on_a_parked_stream_ends_it_cancelled(engines):
    """cancel() on a parked stream ends it 'cancelled' (no tail flushed) and leaves nothing behind."""
    eng = engines(max_streams=2, max_queue=8)
    h = piecewise(eng)
    say(h, FIRST)
    first = until_span(h)
    parked(eng, 1)
    h.cancel()
    rest = until_done(h)
    done = rest[-1]
    assert done.reason == "cancelled"
    assert done.samples == len(audio(first + rest)) == len(audio(first))
    assert eng.snapshot() == EngineSnapshot(0, 0, 0, waiting_text=0)
    assert_slots_free(eng)


def test_parked_streams_do_not_fill_the_admission_queue(engines):
    """One slot, max_queue 1: with a parked stream, a paused one holding the slot and one request queued,
    submit() refuses only the next request: the parked stream counts neither as active nor as queued."""
    eng = engines(max_streams=1, max_queue=1, evict_after_s=3600.0)
    p = piecewise(eng)
    say(p, FIRST)
    until_span(p)  # parked in the tick that sent the span: everything below is admitted after that
    holder = piecewise(eng)
    holder.pause()
    say(holder, SECOND)  # admitted (it has text), paused: it holds the only slot
    snapshot_when(eng, lambda s: s.active == 1)
    queued = piecewise(eng)  # the old engine refused this one: the parked stream held the slot
    assert eng.snapshot() == EngineSnapshot(1, 1, 1, waiting_text=1)
    with pytest.raises(EngineOverloaded):
        piecewise(eng)
    for h in (p, holder, queued):
        h.cancel()
    assert [until_done(h)[-1].reason for h in (p, holder, queued)] == ["cancelled"] * 3


def test_parked_streams_do_not_count_against_their_owners_cap(engines):
    """max_streams_per_owner 1: an owner whose only stream is parked gets a new request admitted and run to
    its end at once; the parked stream, fed again, then goes on."""
    eng = engines(max_streams=2, max_queue=8, max_streams_per_owner=1)
    p = piecewise(eng, owner="A")
    say(p, FIRST)
    until_span(p)  # parked in the tick that sent the span: `other` is admitted after that
    other = eng.submit(SpeechRequest(text="The same owner asks again.", sampling=SEEDED, owner="A"))
    assert until_done(other)[-1].reason == "end"
    assert eng.snapshot().waiting_text == 1
    p.feed(SECOND)
    p.end()
    done = until_done(p)[-1]
    assert done.reason == "end" and [t.text for t in done.tokens] == [FIRST, SECOND]
