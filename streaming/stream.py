"""One request inside the engine (`Stream`) and the caller's side of it (`StreamHandle`).

The handle is the only object shared between threads: callers set flags and
append text under its lock; the engine thread reads them at the start of every
tick and sends events back through a queue (a `queue.Queue` for plain Python,
an `asyncio.Queue` fed with `call_soon_threadsafe` for asyncio callers).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

import numpy as np

from .codec import crossfade_join
from .errors import TextError
from .events import AudioChunk, Event, SegmentSpan, StreamDone, StreamStats
from .params import SamplingParams, StreamPolicy
from .segment import Segment
from .textprep import PreparedSegment, TextPrep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechRequest:
    """What to say and how."""

    text: str | None = None  # whole text; None = pieces arrive through handle.feed()/end()
    voice: object | None = None  # a resolved Voice (streaming.voices.load_voice) or None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    policy: StreamPolicy = field(default_factory=StreamPolicy)
    request_id: str = ""  # caller's id, for logs
    owner: str = ""  # who asked (a server connection): the engine shares its slots fairly between owners
    return_tokens: bool = False  # attach every segment's tokens to StreamDone (tests, CLI)

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TextError(f"text: expected a string, got {type(self.text).__name__}")


class StreamHandle:
    """The caller's end of a stream: send text and controls, receive events."""

    def __init__(self, stream_id: int, request: SpeechRequest, wake: threading.Condition,
                 loop: asyncio.AbstractEventLoop | None = None, prep: TextPrep | None = None,
                 sink: Callable[[int, Event], None] | None = None) -> None:
        self.id = stream_id
        self.request = request
        self._wake = wake
        self._lock = threading.Lock()
        self._loop = loop
        self._sink = sink  # receives (id, event) instead of the queues (the engine process's writer)
        self._aqueue: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self._queue: queue.Queue[Event] = queue.Queue()
        self._prep = prep  # segments text in the calling thread (None: the handle takes no text)
        self._text_lock = threading.Lock()  # one feed/flush/end at a time, in order
        self.ready: list[PreparedSegment] = []  # segmented, not yet taken by the engine
        self.text_ended = request.text is not None
        self.cancelled = False
        self.paused = False
        self.finished = False  # set by the engine once StreamDone was emitted

    # ---- controls (any thread) -------------------------------------------------
    def _control(self, fn) -> None:
        with self._lock:
            fn()
        with self._wake:
            self._wake.notify()

    def feed(self, text: str) -> None:
        """Append text to a piecewise request (segments complete sentences in the calling thread)."""
        if not isinstance(text, str):
            raise TextError(f"text: expected a string, got {type(text).__name__}")
        with self._text_lock:
            if self.text_ended:
                raise TextError("text: this request's text has already ended")
            pieces = self._prep.feed(text) if self._prep is not None else []
            if pieces:
                self._control(lambda: self.ready.extend(pieces))

    def flush(self) -> None:
        """Synthesise what is buffered now, even mid-sentence."""
        with self._text_lock:
            pieces = self._prep.flush() if self._prep is not None and not self.text_ended else []
            if pieces:
                self._control(lambda: self.ready.extend(pieces))

    def end(self) -> None:
        """No more text: finish what is buffered, then end the stream."""
        with self._text_lock:
            if self.text_ended:
                return
            pieces = self._prep.flush() if self._prep is not None else []

            def close() -> None:
                self.ready.extend(pieces)
                self.text_ended = True

            self._control(close)

    def cancel(self) -> None:
        """Stop at once (idempotent). The stream ends with reason 'cancelled'."""
        self._control(lambda: setattr(self, "cancelled", True))

    def pause(self) -> None:
        """Spend no compute on this stream until resume() (backpressure)."""
        self._control(lambda: setattr(self, "paused", True))

    def resume(self) -> None:
        self._control(lambda: setattr(self, "paused", False))

    # ---- events (engine thread -> caller) -------------------------------------------
    def emit(self, event: Event) -> None:
        """Called by the engine thread."""
        if self._sink is not None:  # must not block: it runs on the engine thread
            self._sink(self.id, event)
        elif self._aqueue is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, event)
            except RuntimeError:  # the caller's loop is closed: nobody is listening
                pass
        else:
            self._queue.put(event)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Blocking iterator (plain Python); StreamDone is the last event."""
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if isinstance(event, StreamDone):
                return

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._aqueue is None:
            raise RuntimeError("submit(..., loop=asyncio.get_running_loop()) to iterate asynchronously")
        while True:
            event = await self._aqueue.get()
            yield event
            if isinstance(event, StreamDone):
                return


class SegmentVoice:
    """The first segment's output used as the voice of later segments (no preset given)."""

    def __init__(self, first: Segment) -> None:
        self._first = first

    @property
    def semantic(self) -> np.ndarray:
        return np.asarray(self._first.semantic, dtype=np.int64)

    @property
    def coarse(self) -> np.ndarray:
        return self._first.coarse_codes

    @property
    def fine(self) -> np.ndarray:
        return self._first.fine


@dataclass
class Stream:
    """Engine-side state of one request (touched only by the engine thread)."""

    handle: StreamHandle
    submitted: float  # time.perf_counter() at submit
    segments: list[Segment] = field(default_factory=list)
    text_done: bool = False  # no more segments will be added
    admitted: float | None = None
    emitted: int = 0  # samples handed out
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # delayed tail
    overlap: int = 240  # samples crossfaded at segment joins
    stats: StreamStats = field(default_factory=StreamStats)
    spans_sent: int = 0  # segments whose audio is complete and whose span was emitted
    paused_since: float | None = None  # when its consumer stalled (handle.paused), None while running
    evicted: bool = False  # paused long enough that its KV slots were given to others; resumes later
    done: bool = False

    @property
    def id(self) -> int:
        return self.handle.id

    @property
    def request(self) -> SpeechRequest:
        return self.handle.request

    def current(self, stage: str) -> Segment | None:
        """The segment `stage` works on: the first one it has not finished."""
        for seg in self.segments:
            if stage == "semantic" and not seg.sem.done:
                return seg
            if stage == "coarse" and not (seg.co is not None and seg.co.done):
                return seg
            if stage == "fine" and not (seg.fi is not None and seg.fi.done):
                return seg
            if stage == "decode" and not seg.dec.done:
                return seg
        return None

    @property
    def caught_up(self) -> bool:
        """Every segment's audio is complete and was handed out with its span (a crossfade tail may be held)."""
        return self.spans_sent == len(self.segments)

    @property
    def produced(self) -> int:
        """Output samples so far, emitted or held back for a crossfade."""
        return self.emitted + len(self.held)

    def push_audio(self, seg: Segment, pcm: np.ndarray) -> AudioChunk | None:
        """Add a segment's PCM; return the chunk that is now final (a short tail is held back)."""
        if seg.start_sample is None:
            ov = min(self.overlap, len(self.held), len(pcm))
            seg.start_sample = self.produced - ov
            audio = crossfade_join(self.held, pcm, ov)
        else:
            audio = np.concatenate([self.held, pcm])
        seg.n_samples += len(pcm)
        seg.end_sample = seg.start_sample + seg.n_samples
        keep = min(self.overlap, len(audio))
        self.held = audio[len(audio) - keep:]
        out = audio[: len(audio) - keep]
        return self._chunk(out)

    def flush_audio(self) -> AudioChunk | None:
        """End of stream: emit the held tail."""
        out, self.held = self.held, np.zeros(0, dtype=np.float32)
        return self._chunk(out)

    def _chunk(self, samples: np.ndarray) -> AudioChunk | None:
        if len(samples) == 0:
            return None
        chunk = AudioChunk(sample=self.emitted, samples=samples.astype(np.float32, copy=False))
        self.emitted += len(samples)
        if self.stats.ttfa_s is None:
            self.stats.ttfa_s = time.perf_counter() - self.submitted
        return chunk

    def span(self, seg: Segment) -> SegmentSpan:
        start = seg.start_sample if seg.start_sample is not None else self.produced
        end = seg.end_sample if seg.end_sample is not None else start
        return SegmentSpan(index=seg.index, text=seg.text, start_sample=start, end_sample=end)
