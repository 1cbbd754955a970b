"""One request's life cycle, the same for every door: engine stream in, `RequestEvent`s out.

    pump:  engine events ──► credit (pauses the stream while the client owes audio) ──► format pipeline
              ──► Audio / Segment ──► events() ──► the front end's wire
    text:  feed / flush / end (piecewise requests) reset the silence deadline; too much text, text after
           end, or silence past request_text_timeout end the request with an error
    end:   exactly one Done, after every other event; metrics recorded once; the admission counted back
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from protocol import ProtocolError, check_request_chars
from streaming.errors import ErrorCode, TextError
from streaming.events import AudioChunk, SegmentSpan, StreamDone

from ..enginelink import EngineStream
from ..formats import AudioPipeline, convert
from .events import Audio, Done, Flushed, RequestEvent, RequestSpec, Segment
from .stats import engine_failure, wire_stats

if TYPE_CHECKING:
    from .layer import Client

log = logging.getLogger(__name__)

ENGINE_RATE = 24_000  # Hz of the engine's PCM


class Request:
    """A request in flight; its front end reads `events()` and sends text through feed/flush/end."""

    def __init__(self, client: Client, spec: RequestSpec, stream: EngineStream) -> None:
        self.client = client
        self.spec = spec
        self.id = spec.id
        self.stream = stream
        self.piecewise = spec.text is None
        self.pipeline = AudioPipeline(spec.encoding, spec.sample_rate, speed=spec.speed)
        self.chars = 0  # characters received so far (piecewise requests)
        self.ended = not self.piecewise  # all text received
        self.failure: ProtocolError | None = None  # set when the request must end with an error
        self.gone = False  # the client left: the request ends as "disconnected"
        self.done: Done | None = None
        self._events: asyncio.Queue[RequestEvent] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._silence: asyncio.TimerHandle | None = None
        self._first_audio_at: float | None = None
        self._audio_s = 0.0
        self.least_lead_s: float | None = None  # least audio ahead of real time seen (the underrun signal)
        self.pump = asyncio.create_task(self._pump(), name=f"{client.conn_id} pump {spec.id}")
        self._arm_silence()

    # --- what the front end calls ------------------------------------------------------------------
    async def events(self) -> AsyncIterator[RequestEvent]:
        """Every event of the request; Done is the last."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, Done):
                return

    def header(self) -> bytes:
        """Bytes that precede all audio of a file-like body (the WAV header); b"" for every other format."""
        return self.pipeline.header()

    def delivered(self, audio: Audio) -> None:
        """The front end handed `audio` to a peer that gives no receipts (HTTP, Wyoming): count it read."""
        ledger = self.client.ledger
        ledger.sent(audio.seconds)
        ledger.acked(ledger.sent_s)

    async def feed(self, text: str) -> None:
        """More text for a piecewise request; ProtocolError (the request goes on) when it cannot be taken."""
        self._check_open("text")
        self.chars += len(text)
        check_request_chars(self.id, self.chars, self.client.layer.config.limits)
        self._arm_silence()
        await self._text(self.stream.feed, text)

    async def flush(self) -> None:
        """Synthesise what was sent so far, even mid-sentence; a Flushed event follows."""
        self._check_open("flush")
        self._arm_silence()
        await self._text(self.stream.flush)
        self._events.put_nowait(Flushed())

    async def end(self) -> None:
        """No more text: finish what is buffered, then the request ends."""
        self._check_open("end")
        self.ended = True
        self._disarm_silence()
        await self._text(self.stream.end)

    def cancel(self) -> None:
        """Stop now; Done(reason cancelled) follows."""
        log.info("conn %s: request %s: cancel", self.client.conn_id, self.id)
        self.stream.cancel()

    def fail(self, error: ProtocolError) -> None:
        """End the request with `error`: audio not yet handed out is dropped, then Done carries it."""
        if self.failure is None and self.done is None:
            log.info("conn %s: request %s fails: %s: %s", self.client.conn_id, self.id, error.code, error.message)
            error.id = self.id
            self.failure = error
            self._disarm_silence()
            self.stream.cancel()

    def disconnect(self) -> None:
        """The client left: stop, and count it as disconnected."""
        self.gone = True
        self._disarm_silence()
        self.stream.cancel()

    # --- text --------------------------------------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if not self.piecewise:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"type: {what} applies only to requests whose text follows "
                                f"(start); {self.id!r} was given its whole text", id=self.id)
        if self.ended:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"type: {what} after end for request {self.id!r}", id=self.id)

    async def _text(self, call, *args: str) -> None:  # type: ignore[no-untyped-def]
        try:
            await call(*args)
        except TextError as exc:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"text: {exc}", id=self.id, field="text") from None

    def _arm_silence(self) -> None:
        timeout = self.client.layer.config.request_text_timeout
        if not self.piecewise or self.ended or timeout is None:
            return
        self._disarm_silence()
        self._silence = self._loop.call_later(timeout, self._silent, timeout)

    def _disarm_silence(self) -> None:
        if self._silence is not None:
            self._silence.cancel()
            self._silence = None

    def _silent(self, timeout: float) -> None:
        what = "no text since its start" if self.chars == 0 else "no more text"
        self.fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, f"request {self.id!r} received {what} for {timeout:g} s "
                                "(request_text_timeout); send end when the text is complete", fatal=False))

    # --- the pump ----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        """Engine events through credit and the pipeline into events(); always ends with Done."""
        done: StreamDone | None = None
        seq = 0
        try:
            async for event in self.stream:
                if isinstance(event, StreamDone):
                    done = event
                    break
                if self.failure is not None or self.gone:
                    continue
                if isinstance(event, AudioChunk) and event.samples.size:
                    seq = await self._audio(event, seq)
                elif isinstance(event, SegmentSpan):
                    self._events.put_nowait(Segment(event.text, self._scale(event.start_sample),
                                                    self._scale(event.end_sample)))
            if done is not None and done.reason == "end" and self.failure is None and not self.gone:
                tail = await convert(self.pipeline, None)
                if tail.data:
                    self._put_audio(Audio(seq, tail.first_sample, tail.data, 0.0))
        except asyncio.CancelledError:
            self.gone = True
            raise
        except Exception as exc:  # noqa: BLE001 - one request's bug must not take the connection down
            log.exception("conn %s: request %s: pump failed", self.client.conn_id, self.id)
            self.stream.cancel()
            self.failure = self.failure or ProtocolError(ErrorCode.INTERNAL, f"server error: {type(exc).__name__}",
                                                         id=self.id)
        finally:
            self.pipeline.close()
            self._finish(done)

    async def _audio(self, chunk: AudioChunk, seq: int) -> int:
        seconds = chunk.samples.size / ENGINE_RATE
        self._track_lead(seconds)
        self.client.layer.metrics.audio_sent(seconds)
        await self._wait_credit()
        out = await convert(self.pipeline, chunk.samples)
        if not out.data:  # the resampler or encoder holds it: it comes with a later chunk
            return seq
        self._put_audio(Audio(seq, out.first_sample, out.data, seconds))
        return seq + 1

    def _put_audio(self, audio: Audio) -> None:
        self.client.ledger.queued(audio.seconds)
        self._events.put_nowait(audio)

    async def _wait_credit(self) -> None:
        """While the client owes receipts for max_buffer_s of audio, the engine spends nothing on this stream."""
        ledger = self.client.ledger
        if ledger.has_credit():
            return
        log.debug("conn %s: request %s: paused, %.2f s of audio unacknowledged", self.client.conn_id, self.id,
                  ledger.owed_s)
        self.stream.pause()
        try:
            await ledger.wait_credit()
        finally:
            self.stream.resume()

    def _track_lead(self, seconds: float) -> None:
        """How far ahead of a real-time listener (started at the first audio) the request stays."""
        now = self._loop.time()
        if self._first_audio_at is None:
            self._first_audio_at = now
        else:
            lead = self._audio_s - (now - self._first_audio_at)
            self.least_lead_s = lead if self.least_lead_s is None else min(self.least_lead_s, lead)
        self._audio_s += seconds

    def _scale(self, sample: int) -> int:
        return sample * self.spec.sample_rate // ENGINE_RATE

    def _finish(self, done: StreamDone | None) -> None:
        """Exactly once: the reason, the metrics, the Done event, and the client's counts given back."""
        self._disarm_silence()
        failure = self.failure
        if failure is None and not self.gone and (done is None or done.reason == "error"):
            failure = engine_failure(self.id, done)
        if self.gone and failure is None:
            reason = "disconnected"
        elif failure is not None:
            reason = failure.code if failure.code in ("slow_consumer", "idle_timeout") else "error"
        else:
            reason = done.reason  # type: ignore[union-attr]
        stats = done.stats if done is not None else None
        self.client.layer.metrics.record_done(
            reason, stats.ttfa_s if stats else None, stats.rtf if stats else None,
            queued_s=stats.queued_s if stats else None, stage_s=stats.stage_s if stats else None,
            ahead_s=self.least_lead_s)
        self.done = Done(reason, self.pipeline.samples_out, wire_stats(done), failure)
        self._events.put_nowait(self.done)
        self.client.finished(self)
        log.info("conn %s: request %s: done (%s), %d samples, ttfa %s ms, rtf %s", self.client.conn_id, self.id,
                 reason, self.done.samples, self.done.stats.get("ttfa_ms"), self.done.stats.get("rtf"))
