"""The engine: one thread that advances every active stream, batch by batch.

    submit() ──> admission queue ──> active streams ──> step(): schedule → run → postprocess
                 (bounded)      ^    (<= max_streams)
                                └── parked ─────┘  (piecewise, its text so far spoken: no slot until more)

Each tick (`step`) the engine applies the callers' controls (new text, cancel,
pause), asks every stage what it could do for every stream (`Stage.work`, plain
data), lets the `Scheduler` group that into batches, runs each batch as one
stage action over all its streams (`Stage.run`: one model call whatever the
number of streams), then emits the audio the decode stage published and ends
the streams that are complete. A piecewise stream whose text so far is all
spoken is parked: it gives its slot back and waits, like a queued request, for
its next text, end or cancel. Model compute never runs on the caller's
(asyncio) thread. A failure inside one stream's work ends only that stream
(StreamDone reason "error", code "internal"); a failing batched call is retried
row by row so the others go on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import numpy as np
import torch

from .bark import segment_history, segment_seed
from .codec import DEFAULT_DECODER, ChunkSchedule
from .constants import SAMPLE_RATE
from .errors import BarkStreamError, ConfigError, EngineOverloaded, ErrorCode, TextError
from .events import EngineSnapshot, Event, SegmentTokens, StreamDone
from .models.bundle import BarkModels
from .params import SamplingParams
from .sampling import make_generator
from .scheduler import Scheduler, SchedulerConfig, Work
from .segment import RowFailures, Segment
from .stages.base import Stage
from .stages.coarse import CoarseStage
from .stages.decode import DecodeStage
from .stages.fine import FineStage
from .stages.semantic import SemanticStage
from .stream import SegmentVoice, SpeechRequest, Stream, StreamHandle
from .text import normalize_whitespace
from .textprep import PreparedSegment, TextPrep
from .threads import compute_threads

logger = logging.getLogger(__name__)


@dataclass
class EngineCounters:
    """What the engine thread did (read by benchmarks and tests)."""

    ticks: int = 0  # ticks that ran at least one batch
    batches: int = 0  # batched stage actions (model calls and bookkeeping passes)
    model_calls: int = 0  # batched stage actions that called a model
    parks: int = 0  # times a piecewise stream whose text was all spoken gave its slot back until more came


@dataclass(frozen=True)
class EngineConfig:
    max_streams: int = 8  # streams advanced together (KV-cache slots per model)
    max_queue: int = 32  # admitted-but-waiting requests; beyond this submit() raises EngineOverloaded
    max_streams_per_owner: int | None = None  # active streams one owner may hold; None = no cap
    decoder: str = DEFAULT_DECODER  # "stateful" (exact) or "crossfade"
    chunks: ChunkSchedule = field(default_factory=ChunkSchedule)  # decode chunk sizes
    segment_overlap: int = 240  # samples crossfaded where two text segments join (10 ms)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    idle_wait_s: float = 0.05  # how long an idle engine sleeps between checks
    evict_after_s: float = 1.0  # a stream paused this long gives its slots to waiting streams, resumes later
    threads: int | None = None  # torch intra-op threads of the engine thread; None = compute_threads()
    static_shapes: bool = False  # decode steps at bucketed static shapes (what CUDA graphs need; CPU tests it)
    cuda_graphs: bool = False  # capture the semantic and coarse decode steps as CUDA graphs at start (GPU only)
    coarse_prefix_slots: int | None = None  # KV slots preparing next coarse windows' prompts (None: max_streams; 0: off)

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ConfigError(f"max_streams: must be >= 1, got {self.max_streams}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue: must be >= 0, got {self.max_queue}")
        if self.max_streams_per_owner is not None and self.max_streams_per_owner < 1:
            raise ConfigError(f"max_streams_per_owner: must be >= 1 or None, got {self.max_streams_per_owner}")
        if self.coarse_prefix_slots is not None and self.coarse_prefix_slots < 0:
            raise ConfigError(f"coarse_prefix_slots: must be >= 0 or None, got {self.coarse_prefix_slots}")
        if self.segment_overlap < 0:
            raise ConfigError(f"segment_overlap: must be >= 0, got {self.segment_overlap}")


class Engine:
    """Owns the models and the engine thread; `submit()` is safe from any thread."""

    def __init__(self, models: BarkModels, codec, tokenizer, config: EngineConfig | None = None,
                 *, voices_dir=None, thread_context: Callable[[], ContextManager] | None = None) -> None:
        self.models, self.codec, self.tokenizer = models, codec, tokenizer
        self.config = config or EngineConfig()
        self.voices_dir = voices_dir
        self.model_name = models.name
        n = self.config.max_streams
        static = dict(static=self.config.static_shapes, graphs=self.config.cuda_graphs)
        self.semantic = SemanticStage(models.text, n, **static)
        self.coarse = CoarseStage(models.coarse, n, prefix_slots=self.config.coarse_prefix_slots, **static)
        self.fine = FineStage(models)
        self.decode = DecodeStage(codec, self.config.decoder, self.config.chunks)
        self.stages: list[Stage] = [self.semantic, self.coarse, self.fine, self.decode]  # pipeline order
        self._stage = {stage.name: stage for stage in self.stages}
        self.scheduler = Scheduler(self.config.scheduler)
        self.counters = EngineCounters()
        self._thread_context = thread_context  # entered on the engine thread around its loop (benchmarks)
        self._wake = threading.Condition()
        self._queue: collections.deque[Stream] = collections.deque()
        self._active: dict[int, Stream] = {}
        self._parked: dict[int, Stream] = {}  # piecewise streams whose text so far is spoken (no slot, not queued)
        self._segs: dict[tuple[int, str], Segment] = {}  # this tick's (stream, stage) -> segment its work is for
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._recent_totals: collections.deque[float] = collections.deque(maxlen=16)

    # ------------------------------------------------------------------ public API
    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._dead is None

    def snapshot(self) -> EngineSnapshot:
        with self._wake:
            active = list(self._active.values())
            return EngineSnapshot(len(active), len(self._queue), sum(s.handle.paused for s in active),
                                  waiting_text=len(self._parked))

    def start(self) -> float:
        """Start the engine thread and warm it up; returns the warm-up seconds (blocks)."""
        t0 = time.perf_counter()
        graphs = sum(stage.static.capture() for stage in (self.semantic, self.coarse) if stage.static is not None)
        if graphs:
            logger.info("captured %d CUDA graphs in %.2f s", graphs, time.perf_counter() - t0)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bark-engine", daemon=True)
            self._thread.start()
        warm = SpeechRequest(text="Hello.", sampling=SamplingParams(greedy=True, max_semantic_tokens=8),
                             request_id="warmup")
        for event in self.submit(warm).events(timeout=600):
            if isinstance(event, StreamDone) and event.reason == "error":
                raise RuntimeError(f"engine warm-up failed: {event.error}")
        seconds = time.perf_counter() - t0
        logger.info("engine warm-up took %.2f s", seconds)
        return seconds

    def submit(self, request: SpeechRequest, *, loop: asyncio.AbstractEventLoop | None = None,
               sink: Callable[[int, Event], None] | None = None) -> StreamHandle:
        """Queue a request; returns its handle. Raises TextError, EngineOverloaded.

        `sink(stream_id, event)`, if given, receives the stream's events on the engine thread
        instead of the handle's queues (it must not block); the engine process uses it.

        A whole text is segmented and tokenised here, in the calling thread (servers call
        this from a worker thread): the engine thread never does work sized by the caller.
        """
        if request.text is not None and not normalize_whitespace(request.text):
            raise TextError("text: is empty")
        prep = TextPrep(self.tokenizer)
        prepared = prep.whole(request.text) if request.text is not None else []
        if self._dead is not None or self._stopping:
            raise EngineOverloaded("engine: not accepting requests (stopped or failed)", retry_after_ms=5000)
        with self._wake:
            if len(self._queue) >= self.config.max_queue and len(self._active) >= self.config.max_streams:
                raise EngineOverloaded(
                    f"engine: admission queue is full ({self.config.max_queue} waiting)",
                    retry_after_ms=self._retry_after_ms())
            self._next_id += 1
            handle = StreamHandle(self._next_id, request, self._wake, loop, prep, sink)
            handle.ready = prepared
            stream = Stream(handle=handle, submitted=time.perf_counter(), overlap=self.config.segment_overlap)
            self._queue.append(stream)
            self._wake.notify()
        logger.debug("stream %d (%s) queued", handle.id, request.request_id)
        return handle

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _retry_after_ms(self) -> int:
        mean = sum(self._recent_totals) / len(self._recent_totals) if self._recent_totals else 2.0
        waves = 1 + len(self._queue) // self.config.max_streams
        return int(1000 * mean * waves)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        torch.set_num_threads(self.config.threads or compute_threads())  # this thread's own pool
        try:
            with self._thread_context() if self._thread_context else contextlib.nullcontext():
                while True:
                    with self._wake:
                        if self._stopping:
                            break
                        self._admit()
                        streams = list(self._active.values())
                    if not self.step(streams):
                        with self._wake:  # submit() and every control notify: new work wakes it at once
                            if not self._stopping:
                                self._wake.wait(self.config.idle_wait_s)
        except BaseException as exc:  # the engine itself broke: nothing can continue
            self._dead = exc
            logger.critical("engine thread died: %s", exc, exc_info=True)
        finally:
            self._fail_all(ErrorCode.INTERNAL if self._dead else ErrorCode.SHUTTING_DOWN,
                           "engine failure" if self._dead else "engine stopped")

    def step(self, streams: list[Stream]) -> bool:
        """One tick: schedule → run → postprocess. Returns False when there was nothing to do."""
        self._apply_controls(streams)
        live = [s for s in streams if not s.done and not s.handle.paused]
        plan = self.scheduler.plan(self._work(live), {st.name: st.free_slots() for st in self.stages})
        for batch in plan.batches:
            self._execute(batch)
        self._postprocess(live)
        self._park_idle(streams)
        if plan.empty:
            return False
        self.counters.ticks += 1
        self.counters.batches += len(plan.batches)
        self.counters.model_calls += sum(b[0].action in self._stage[b[0].stage].model_actions for b in plan.batches)
        return True

    def _admit(self) -> None:
        """Fill free slots from the queue and the parked streams, fairly.

        Only streams with something to do are admitted (a piecewise request whose text has
        not arrived, or whose text so far is spoken, holds no slot); an owner (a connection)
        holds at most `max_streams_per_owner` slots; among the rest, the owner holding the
        fewest slots goes first, then first come first served.
        """
        cap = self.config.max_streams_per_owner
        held = collections.Counter(s.request.owner for s in self._active.values() if not s.evicted)
        free = self.config.max_streams - sum(held.values())
        while free > 0:
            best = None
            for stream in self._waiting():
                if not self._has_input(stream):
                    continue
                n = held[stream.request.owner]
                if cap is not None and n >= cap and not stream.handle.cancelled:
                    continue
                if best is None or n < best[1]:
                    best = (stream, n)
                    if n == 0:
                        break
            if best is None:
                return
            stream = best[0]
            self._unwait(stream)
            if stream.admitted is None:  # a parked stream keeps the numbers of its first admission
                stream.admitted = time.perf_counter()
                stream.stats.queued_s = stream.admitted - stream.submitted
            self._active[stream.id] = stream
            held[stream.request.owner] += 1
            free -= 1

    def _waiting(self):
        """The streams waiting for a slot, first come first served: the queue, and the parked streams whose
        caller sent something (the others cannot be admitted: they are left out before sorting)."""
        called = [s for s in self._parked.values() if self._has_input(s)]
        if not called:
            return self._queue
        return sorted([*self._queue, *called], key=lambda s: s.id)

    def _unwait(self, stream: Stream) -> None:
        """Take a stream that is being admitted out of the queue or the parked set."""
        if self._parked.pop(stream.id, None) is not None:
            return
        for i, queued in enumerate(self._queue):
            if queued is stream:
                del self._queue[i]
                return

    @staticmethod
    def _has_input(stream: Stream) -> bool:
        """Has its caller given it something to do (text, the end of its text, or a cancel)?"""
        h = stream.handle
        return bool(h.ready or h.text_ended or h.cancelled)

    # ------------------------------------------------------------------- parking
    def _park_idle(self, streams: list[Stream]) -> None:
        """Park every stream that has nothing to do until its caller sends more."""
        for stream in streams:
            if self._idle(stream):
                self._park(stream)

    def _idle(self, stream: Stream) -> bool:
        """Its text may go on, and everything it was given is spoken: every segment complete in every stage,
        its audio and span handed out (the crossfade tail stays held for the next segment or the end)."""
        return (not stream.done and not stream.text_done and stream.caught_up
                and all(stream.current(stage.name) is None for stage in self.stages))

    def _park(self, stream: Stream) -> None:
        """Give an idle stream's slot back: it leaves the active set (no stage slot, not counted against
        max_streams, max_streams_per_owner or max_queue) and waits for input like a queued request; `_admit`
        takes it back and it goes on where it was (its segments, held audio and stats are untouched)."""
        with stream.handle._lock:
            if self._has_input(stream):  # text or a control came after this tick read them: keep going
                return
        for seg in stream.segments:  # complete segments hold nothing; release is a no-op then, kept as a guard
            for stage in self.stages:
                stage.release(seg)
        stream.paused_since, stream.evicted = None, False  # no slot held: nothing to evict; pacing starts over
        with self._wake:
            self._active.pop(stream.id, None)
            self._parked[stream.id] = stream
        self.counters.parks += 1
        logger.debug("stream %d (%s) parked: its text so far is spoken", stream.id, stream.request.request_id)

    # ------------------------------------------------------------- text & controls
    def _apply_controls(self, streams: list[Stream]) -> None:
        """Take each stream's cancel flag and the segments its caller prepared (no text work here)."""
        now = time.perf_counter()
        waiting = bool(self._queue) or any(self._has_input(s) for s in self._parked.values())
        for stream in streams:
            h = stream.handle
            with h._lock:
                cancelled, ready, ended, paused = h.cancelled, h.ready, h.text_ended, h.paused
                h.ready = []
            if cancelled:
                self._end(stream, "cancelled")
                continue
            self._pace(stream, paused, now, waiting)
            try:
                for prepared in ready:
                    self._add_segment(stream, prepared)
                stream.text_done = ended
            except Exception as exc:
                self._fail(stream, exc)

    def _pace(self, stream: Stream, paused: bool, now: float, waiting: bool) -> None:
        """A stream whose consumer stalled keeps its slot briefly (backpressure is usually short); after
        evict_after_s, if others wait, it gives its KV slots back and stops counting against max_streams.
        Once resumed it re-reads its prompts into fresh slots (as soon as slots are free) and goes on."""
        if not paused:
            stream.paused_since = None
            stream.evicted = False
            return
        if stream.paused_since is None:
            stream.paused_since = now
        if stream.evicted or not waiting or now - stream.paused_since < self.config.evict_after_s:
            return
        for seg in stream.segments:
            self.semantic.release(seg)
            self.coarse.release(seg)
        stream.evicted = True
        logger.info("stream %d (%s) evicted: its reader stalled for %.1f s", stream.id,
                    stream.request.request_id, now - stream.paused_since)

    def _add_segment(self, stream: Stream, prepared: PreparedSegment) -> None:
        index = len(stream.segments)
        first = SegmentVoice(stream.segments[0]) if stream.segments else None
        voice = segment_history(stream.request.voice, first, index)
        gen = make_generator(segment_seed(stream.request.sampling.seed, index))
        stream.segments.append(Segment(index, prepared.text, prepared.token_ids, voice, gen))

    # ------------------------------------------------------------------- planning
    def _work(self, streams: list[Stream]) -> list[Work]:
        """What every stage could do for every stream now (no model touched, nothing changed)."""
        work: list[Work] = []
        self._segs.clear()
        now = time.perf_counter()
        for stream in streams:
            policy = stream.request.policy
            made, elapsed = stream.produced / SAMPLE_RATE, now - stream.submitted
            prio = made - elapsed  # audio ahead of the wall clock
            pace = (prio, made / elapsed if elapsed > 0 else 0.0)
            for stage in self.stages:
                seg = stream.current(stage.name)
                if seg is None:
                    continue
                self._segs[(stream.id, stage.name)] = seg  # the segment the work is for, kept for _execute
                seg.pace = pace
                w = stage.work(seg, policy)
                if w is not None:
                    work.append(Work(stream.id, stage.name, w.action, key=w.key, priority=prio,
                                     needs_slot=w.needs_slot, cost=w.cost, detail=w))
        return work

    # ------------------------------------------------------------------ execution
    def _execute(self, batch: list[Work]) -> None:
        streams = [self._active.get(w.stream) for w in batch]
        if any(s is None or s.done for s in streams):  # ended earlier in this tick
            batch = [w for w, s in zip(batch, streams) if s is not None and not s.done]
            streams = [s for s in streams if s is not None and not s.done]
            if not batch:
                return
        t0 = time.perf_counter()
        stage = self._stage[batch[0].stage]
        try:
            stage.run(batch[0].action, [self._segs[(s.id, stage.name)] for s in streams],
                      [s.request.sampling for s in streams], [w.detail for w in batch])
        except RowFailures as rows:  # the model call worked; some streams' own steps failed
            for i, exc in rows.failures:
                self._fail(streams[i], exc)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(streams[0], exc)
                return
            logger.warning("batch of %d %s/%s failed (%s); retrying one by one",
                           len(batch), batch[0].stage, batch[0].action, exc)
            for w, s in zip(batch, streams):
                if not s.done:
                    self._execute([w])
            return
        end = time.perf_counter()
        share = (end - t0) / len(batch)
        mark = f"{batch[0].stage}/{batch[0].action}"
        for w, s in zip(batch, streams):
            s.stats.stage_s[w.stage] = s.stats.stage_s.get(w.stage, 0.0) + share
            if mark not in s.stats.first_s:  # the first-audio critical path, link by link
                s.stats.first_s[mark] = end - s.submitted
                if mark == "coarse/prefill" and s.segments:
                    s.stats.semantic_at_first_window = len(s.segments[0].semantic)

    def _postprocess(self, streams: list[Stream]) -> None:
        """Emit the audio and segment spans the tick produced; end the streams that are complete."""
        for stream in streams:
            if stream.done:
                continue
            for seg in stream.segments[stream.spans_sent:]:
                for pcm in seg.dec.pcm:
                    if len(pcm) or seg.start_sample is None:
                        chunk = stream.push_audio(seg, pcm)
                        if chunk is not None:
                            stream.handle.emit(chunk)
                seg.dec.pcm.clear()
                if not seg.dec.done:
                    break
                stream.handle.emit(stream.span(seg))
                stream.spans_sent += 1
            if stream.text_done and stream.caught_up:
                self._end(stream, "end")

    # ------------------------------------------------------------------ endings
    def _end(self, stream: Stream, reason: str, code: str | None = None, message: str | None = None) -> None:
        if stream.done:
            return
        stream.done = True
        for seg in stream.segments:
            for stage in self.stages:
                stage.release(seg)
        if reason == "end":
            tail = stream.flush_audio()
            if tail is not None:
                stream.handle.emit(tail)
        st = stream.stats
        st.samples = stream.emitted
        st.total_s = time.perf_counter() - stream.submitted
        st.tokens = {
            "semantic": sum(len(s.semantic) for s in stream.segments),
            "coarse_frames": sum(s.n_coarse_frames for s in stream.segments),
            "fine_frames": sum(s.fine.shape[1] for s in stream.segments),
            "segments": len(stream.segments),
        }
        if reason == "end":
            self._recent_totals.append(st.total_s)
        with self._wake:
            self._active.pop(stream.id, None)
            self._parked.pop(stream.id, None)
        stream.handle.finished = True
        tokens = None
        if stream.request.return_tokens:
            tokens = [SegmentTokens(s.text, np.asarray(s.semantic, dtype=np.int64), s.coarse_codes, s.fine)
                      for s in stream.segments]
        stream.handle.emit(StreamDone(reason, stream.emitted, st, code, message, tokens))
        logger.info("stream %d (%s) %s: %.2f s audio in %.2f s, ttfa %s", stream.id,
                    stream.request.request_id, reason, st.audio_s, st.total_s,
                    "-" if st.ttfa_s is None else f"{st.ttfa_s:.3f} s")

    def _fail(self, stream: Stream, exc: BaseException) -> None:
        if isinstance(exc, BarkStreamError):
            code, message = exc.code, str(exc)
        else:
            code, message = ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}"
        logger.error("stream %d (%s) failed: %s", stream.id, stream.request.request_id, exc, exc_info=True)
        self._end(stream, "error", str(code), message)

    def _fail_all(self, code: ErrorCode, message: str) -> None:
        with self._wake:
            streams = list(self._active.values()) + list(self._queue) + list(self._parked.values())
            self._queue.clear()
            self._parked.clear()
        for stream in streams:
            self._end(stream, "error" if code is ErrorCode.INTERNAL else "cancelled", str(code), message)
