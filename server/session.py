"""One WebSocket connection: receive, send and watchdog tasks, and one pump task per request id.

    frames ──► receive ──► engine.submit / handle.feed ...
                                  │
    engine handles ──► pump (per id) ──► out queue ──► send ──► frames
                         ▲ waits for credit (AudioLedger)      │ pings
                         └──────────── watchdog ◄── pongs ◄────┘

The receive task rate-limits, decodes and dispatches client messages; each pump
turns its engine stream's events into `audio`/`segment`/`done` frames; the send
task is the only writer of data frames. The watchdog acknowledges audio with
pings and ends the connection when the peer stops reading, vanishes or idles.
When any task ends, the others are cancelled and every engine stream of the
connection is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streaming.engine import EngineOverloaded, SpeechRequest
from streaming.errors import TextError
from streaming.events import AudioChunk, SegmentSpan, StreamDone

from .context import RequestState, ServerContext, engine_failure, wire_stats
from .formats import AudioPipeline
from .flow import AudioLedger, Verdict, Watchdog, WatchdogConfig
from .limits import RateLimiter
from protocol import (
    Cancel,
    ClientMessage,
    End,
    Flush,
    Keepalive,
    ProtocolError,
    Speak,
    Start,
    Text,
    audio_message,
    check_request_chars,
    decode_client_message,
    done_message,
    flushed_message,
    encode_server_message,
    is_valid_id,
    segment_message,
)
from protocol.wire import unpack_map

log = logging.getLogger(__name__)

_REQUEST_MESSAGES = ("text", "flush", "end", "cancel")  # types that act on a request in flight
SAMPLE_RATE = 24_000
_VERDICT_CLOSE = {"slow_consumer": 1008, "idle": 1008}
_VERDICT_CODE = {"slow_consumer": "slow_consumer", "idle": "idle_timeout"}


@dataclass(frozen=True)
class _Close:
    """Out-queue item: close the connection with this code once everything before it is sent."""

    code: int
    reason: str


_Item = tuple[bytes, float] | _Close  # (frame, seconds of audio in it) or a close


class Session:
    """Serves one connection until it closes; `run()` returns once everything it held is freed."""

    def __init__(self, ws: ServerConnection, ctx: ServerContext, conn_id: str, key: int | None = None) -> None:
        cfg = ctx.config
        self.key = key  # index of the API key this connection authenticated with (per-key limits)
        self._ws = ws
        self._ctx = ctx
        self._limits = cfg.limits
        self.conn_id = conn_id
        self._requests: dict[str, RequestState] = {}
        self._out: asyncio.Queue[_Item] = asyncio.Queue(cfg.send_queue_frames)
        self._closing = False  # a fatal error or shutdown queued a _Close
        self._draining = False  # the server drains: new requests are refused with shutting_down
        self._shutdown: asyncio.Task[None] | None = None
        self.ledger = AudioLedger(cfg.max_buffer_s)
        self._bucket = RateLimiter(cfg.max_messages_per_s, cfg.message_burst, cfg.rate_limit_strikes)
        self._last_activity = asyncio.get_running_loop().time()

    @property
    def busy(self) -> bool:
        """True while a request is in flight."""
        return bool(self._requests)

    async def run(self) -> None:
        """Send `ready`, then serve until a task ends; cancel every stream on the way out."""
        cfg = self._ctx.config
        self._out.put_nowait((self._ctx.ready_frame, 0.0))
        dog = Watchdog(self._ws, self.ledger, WatchdogConfig(cfg.probe_interval, cfg.slow_consumer_timeout,
                       cfg.ping_interval, cfg.ping_timeout, cfg.idle_timeout), self.conn_id, self._idle_since)
        receiver = asyncio.create_task(self._receive(), name=f"{self.conn_id} receive")
        sender = asyncio.create_task(self._send(), name=f"{self.conn_id} send")
        watchdog = asyncio.create_task(dog.run(), name=f"{self.conn_id} watchdog")
        try:
            await asyncio.wait((receiver, sender, watchdog), return_when=asyncio.FIRST_COMPLETED)
            if watchdog.done() and not watchdog.cancelled() and watchdog.exception() is None:
                await self._terminate(watchdog.result(), sender)
            elif receiver.done() and self._closing and not sender.done():
                # A fatal error: let the send task deliver the `error` and the close frame.
                await asyncio.wait((sender,), timeout=cfg.close_timeout)
        finally:
            await self._release(receiver, sender, watchdog)

    def _idle_since(self) -> float | None:
        return None if self._requests else self._last_activity

    def drain(self) -> None:
        """The server drains: refuse new requests with `shutting_down`; requests in flight go on."""
        self._draining = True

    def shutdown(self, exc: ProtocolError | None = None) -> None:
        """Queue `exc` (default `shutting_down`, 1001) and its close after the frames already queued."""
        if not self._closing:
            self._closing = True
            exc = exc or ProtocolError("shutting_down", "the server is stopping; reconnect later")
            self._shutdown = asyncio.create_task(self._queue_close(exc), name=f"{self.conn_id} shutdown")

    async def _queue_close(self, exc: ProtocolError) -> None:
        await self._put_error(exc)
        await self._out.put(_Close(exc.close_code or 1001, exc.code))

    async def _terminate(self, verdict: Verdict, sender: asyncio.Task[None]) -> None:
        """The watchdog gave up: cancel every stream now, tell the peer why (if it can hear) and close."""
        cfg = self._ctx.config
        self._closing = True
        self.ledger.close()
        for req in self._requests.values():
            req.handle.cancel()
        log.warning("conn %s: %s: %s; cancelled %d request(s)", self.conn_id, verdict.kind, verdict.message,
                    len(self._requests))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        code = _VERDICT_CODE.get(verdict.kind)
        if code is None:  # the peer answers nothing: no handshake to wait for
            self._ws.transport.abort()
            return
        try:
            self._ctx.metrics.error(code)
            frame = encode_server_message(ProtocolError(code, verdict.message).to_message())
            await asyncio.wait_for(self._ws.send(frame), cfg.close_timeout)
            await asyncio.wait_for(self._ws.close(_VERDICT_CLOSE[verdict.kind], code), cfg.close_timeout)
        except (ConnectionClosed, TimeoutError):
            pass
        if self._ws.close_code is None:  # the peer never completed the closing handshake
            self._ws.transport.abort()

    async def _release(self, *tasks: asyncio.Task[None]) -> None:
        """Cancel the connection's tasks and engine streams and wait until they are gone."""
        self.ledger.close()
        pumps = [req.pump for req in self._requests.values() if req.pump is not None]
        if self._shutdown is not None:
            tasks += (self._shutdown,)
        for req in self._requests.values():
            req.handle.cancel()
            self._ctx.metrics.record_done("disconnected", None, None)  # every started request ends once
            if self.key is not None:
                self._ctx.key_streams[self.key] -= 1
        if self._requests:
            log.info("conn %s: closed with %d request(s) in flight; cancelled %s",
                     self.conn_id, len(self._requests), ", ".join(self._requests))
        self._requests.clear()
        for task in (*tasks, *pumps):
            task.cancel()
        await asyncio.gather(*tasks, *pumps, return_exceptions=True)

    # --- sending -------------------------------------------------------------------

    async def _send(self) -> None:
        """The only writer of data frames: drain the out queue until a _Close or a closed socket."""
        try:
            while True:
                item = await self._out.get()
                if isinstance(item, _Close):
                    await self._ws.close(item.code, item.reason)
                    return
                frame, audio_s = item
                await self._ws.send(frame)
                if audio_s:
                    self.ledger.sent(audio_s)
        except ConnectionClosed as exc:
            log.debug("conn %s: send stopped, connection closed (%s)", self.conn_id, exc)

    async def _put_error(self, exc: ProtocolError) -> None:
        self._ctx.metrics.error(exc.code)
        await self._out.put((encode_server_message(exc.to_message()), 0.0))

    # --- receiving -----------------------------------------------------------------

    async def _receive(self) -> None:
        """Rate-limit, decode and dispatch every frame; on a fatal error queue `error` + close and stop."""
        loop = asyncio.get_running_loop()
        try:
            async for frame in self._ws:
                self._last_activity = loop.time()
                try:
                    self._check_rate(frame, self._last_activity)
                    await self._dispatch(decode_client_message(frame, self._limits))
                except ProtocolError as exc:
                    await self._refuse(exc, frame)
                    if exc.fatal and not self._closing:
                        self._closing = True
                        await self._out.put(_Close(exc.close_code or 1008, exc.code))
                    if exc.fatal:
                        break
            async for _ in self._ws:  # after a fatal error: discard, so that the peer's close frame is read
                pass
        except ConnectionClosed as exc:
            log.info("conn %s: connection lost (%s)", self.conn_id, exc)

    def _check_rate(self, frame: bytes | str, now: float) -> None:
        """Raise `rate_limited` (fatal after too many refusals in a row) when the bucket is empty."""
        verdict = self._bucket.take(now)
        if verdict == "ok":
            return
        cfg = self._ctx.config
        msg = self._peek(frame)
        req_id = msg.get("id") if is_valid_id(msg.get("id")) else None
        fatal = verdict == "close"
        if fatal:
            log.warning("conn %s: closing: %d messages refused in a row (rate limit)", self.conn_id,
                        self._bucket.refused_in_a_row)
        raise ProtocolError("rate_limited", f"more than {cfg.max_messages_per_s:g} messages per second "
                            f"(burst {cfg.message_burst}); this message was dropped", id=req_id,
                            fatal=fatal, close_code=1008 if fatal else None)

    async def _refuse(self, exc: ProtocolError, frame: bytes | str) -> None:
        """Answer a refused message; a bad text/flush/end/cancel for an id in flight ends that request."""
        log.info("conn %s: refused a message (id %s): %s: %s", self.conn_id, exc.id, exc.code, exc.message)
        req = self._requests.get(exc.id) if exc.id is not None else None
        if req is not None and not exc.fatal and self._peek(frame).get("type") in _REQUEST_MESSAGES:
            self._fail(req, exc)
            return
        await self._put_error(exc)

    def _peek(self, frame: bytes | str) -> dict[str, object]:
        """The map a frame holds when it unpacks at all (whatever its fields), else {}."""
        if isinstance(frame, str):
            return {}
        lim = self._limits
        try:
            return unpack_map(frame, max_bytes=lim.max_frame_bytes, max_map_keys=lim.max_map_keys,
                              max_array_items=lim.max_array_items, max_depth=lim.max_depth)
        except ProtocolError:
            return {}

    async def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, Keepalive):  # its arrival already counted as activity (and against the rate limit)
            return
        if isinstance(msg, (Speak, Start)):
            await self._open(msg)
            return
        req = self._requests.get(msg.id)
        if req is None:
            raise ProtocolError("unknown_id", f"id: {msg.id!r} is not in flight on this connection "
                                f"({len(self._requests)} request(s) in flight)", id=msg.id)
        if isinstance(msg, Cancel):
            log.info("conn %s: request %s: cancel", self.conn_id, req.id)
            req.handle.cancel()
        elif req.failure is None:
            try:
                await self._apply(req, msg)
            except ProtocolError as exc:
                self._fail(req, exc)

    async def _apply(self, req: RequestState, msg: Text | Flush | End) -> None:
        """Feed a start request its text, flush or end; ProtocolError if the request cannot take it.

        The handle segments and tokenises what it is given, so it runs in a worker thread:
        neither the event loop nor the engine thread does work sized by a client's text.
        """
        if req.kind != "start":
            raise ProtocolError("bad_field", f"type: {msg.TYPE} applies only to requests opened with start; "
                                f"{req.id!r} was opened with {req.kind}", id=req.id)
        if req.ended:
            raise ProtocolError("bad_field", f"type: {msg.TYPE} after end for request {req.id!r}", id=req.id)
        try:
            if isinstance(msg, Text):
                req.chars += len(msg.text)
                check_request_chars(req.id, req.chars, self._limits)
                await asyncio.to_thread(req.handle.feed, msg.text)
            elif isinstance(msg, Flush):
                await asyncio.to_thread(req.handle.flush)
                await self._out.put((encode_server_message(flushed_message(req.id)), 0.0))
            else:
                req.ended = True
                await asyncio.to_thread(req.handle.end)
        except TextError as exc:
            raise ProtocolError("bad_field", f"text: {exc}", id=req.id) from None

    def _text_deadline(self, req: RequestState) -> None:
        """A `start` request that got no text in request_text_timeout seconds fails (it would wait forever)."""
        if req.chars == 0 and not req.ended and self._requests.get(req.id) is req:
            self._fail(req, ProtocolError("idle_timeout", f"request {req.id!r} received no text within "
                                          f"{self._ctx.config.request_text_timeout:g} s of its start",
                                          id=req.id, fatal=False))

    def _fail(self, req: RequestState, exc: ProtocolError) -> None:
        """End `req` with `exc`: its pump drops further audio and sends `error` then `done(error)`."""
        if req.failure is None:
            log.info("conn %s: request %s fails: %s: %s", self.conn_id, req.id, exc.code, exc.message)
            exc.id = req.id
            req.failure = exc
            req.handle.cancel()

    async def _open(self, msg: Speak | Start) -> None:
        """Check a speak/start, resolve its voice and submit it to the engine; start its pump."""
        cfg = self._ctx.config
        if self._draining or self._closing:
            raise ProtocolError("shutting_down", "the server is stopping and takes no new requests; "
                                "reconnect later", id=msg.id, fatal=False)
        if msg.id in self._requests:
            raise ProtocolError("duplicate_id", f"id: {msg.id!r} is already in flight on this connection",
                                id=msg.id)
        if len(self._requests) >= self._limits.max_ids_in_flight:
            raise ProtocolError("too_many_ids", f"id: {msg.id!r} would be request {len(self._requests) + 1} in "
                                f"flight; max_ids_in_flight is {self._limits.max_ids_in_flight}", id=msg.id)
        per_key = cfg.max_streams_per_key
        if per_key is not None and self.key is not None and self._ctx.key_streams[self.key] >= per_key:
            raise ProtocolError("rate_limited", f"this API key has {per_key} requests in flight "
                                "(max_streams_per_key); retry when one ends", id=msg.id)
        voice = await self._ctx.resolve_voice(msg.voice, msg.id)
        speech = SpeechRequest(text=msg.text if isinstance(msg, Speak) else None, voice=voice,
                               sampling=msg.sampling, policy=msg.policy, request_id=f"{self.conn_id}/{msg.id}",
                               owner=self.conn_id)
        try:
            handle = await asyncio.to_thread(self._ctx.engine.submit, speech, loop=asyncio.get_running_loop())
        except EngineOverloaded as exc:
            raise ProtocolError("overloaded", f"the server is full ({cfg.max_streams} streams and "
                                f"{cfg.max_queue} queued); retry after {exc.retry_after_ms} ms",
                                id=msg.id, retry_after_ms=int(exc.retry_after_ms)) from None
        except TextError as exc:
            raise ProtocolError("bad_field", f"text: {exc}", id=msg.id) from None
        if self._closing:  # the connection went away while the text was being prepared
            handle.cancel()
            return
        req = RequestState(msg.id, msg.TYPE, msg.encoding, handle, sample_rate=msg.sample_rate,
                           pipeline=AudioPipeline(msg.encoding, msg.sample_rate))
        self._requests[msg.id] = req
        if self.key is not None:
            self._ctx.key_streams[self.key] += 1
        self._ctx.metrics.request_started()
        req.pump = asyncio.create_task(self._pump(req), name=f"{self.conn_id} pump {msg.id}")
        if isinstance(msg, Start) and cfg.request_text_timeout is not None:
            asyncio.get_running_loop().call_later(cfg.request_text_timeout, self._text_deadline, req)
        log.info("conn %s: request %s: %s accepted (stream %s, voice %s, %s at %d Hz)", self.conn_id, msg.id,
                 msg.TYPE, handle.id, msg.voice or cfg.default_voice, msg.encoding, msg.sample_rate)

    # --- per-request pump ------------------------------------------------------------

    async def _pump(self, req: RequestState) -> None:
        """Forward one engine stream's events as frames, numbering audio; always ends with `done`.

        Audio goes through the request's pipeline (resampler, encoder); at a normal end what the
        pipeline still holds (filter delay, the encoder's last frames) follows as a last chunk.
        """
        seq = 0
        done: StreamDone | None = None
        assert req.pipeline is not None
        try:
            async for event in req.handle:
                if isinstance(event, StreamDone):
                    done = event
                    break
                if req.failure is not None:
                    continue
                audio_s = 0.0
                if isinstance(event, AudioChunk):
                    if event.samples.size == 0:
                        continue
                    audio_s = event.samples.size / SAMPLE_RATE
                    req.track_lead(asyncio.get_running_loop().time(), audio_s)
                    self._ctx.metrics.audio_sent(audio_s)
                    await self._wait_credit(req)
                    out = await req.convert(event.samples)
                    if not out.data:  # the resampler or encoder is holding it: it comes with a later chunk
                        continue
                    frame = encode_server_message(audio_message(req.id, seq, out.first_sample, out.data))
                    seq += 1
                elif isinstance(event, SegmentSpan):
                    frame = encode_server_message(segment_message(
                        req.id, event.text, req.scale(event.start_sample), req.scale(event.end_sample)))
                else:
                    continue
                await self._put_frame(req, frame, audio_s)
            if done is not None and done.reason == "end" and req.failure is None:
                tail = await req.convert(None)
                if tail.data:
                    await self._put_frame(req, encode_server_message(
                        audio_message(req.id, seq, tail.first_sample, tail.data)), 0.0)
        except Exception as exc:  # noqa: BLE001 - one request's bug must not take the connection down
            log.exception("conn %s: request %s: pump failed", self.conn_id, req.id)
            req.handle.cancel()
            req.failure = req.failure or ProtocolError("internal", f"server error: {type(exc).__name__}")
        finally:
            req.pipeline.close()
        await self._finish(req, done, req.pipeline.samples_out)

    async def _wait_credit(self, req: RequestState) -> None:
        """While the peer owes acknowledgement of max_buffer_s of audio, the engine pauses this stream."""
        if self.ledger.has_credit():
            return
        log.debug("conn %s: request %s: paused, %.2f s of audio unacknowledged", self.conn_id, req.id,
                  self.ledger.owed_s)
        req.handle.pause()
        try:
            await self.ledger.wait_credit()
        finally:
            req.handle.resume()

    async def _put_frame(self, req: RequestState, frame: bytes, audio_s: float) -> None:
        """Queue a frame; while the out queue is full, the engine pauses this stream (backpressure)."""
        self.ledger.queued(audio_s)
        if not self._out.full():
            self._out.put_nowait((frame, audio_s))
            return
        req.handle.pause()
        try:
            await self._out.put((frame, audio_s))
        finally:
            req.handle.resume()

    async def _finish(self, req: RequestState, done: StreamDone | None, samples: int) -> None:
        """Retire the id, then queue `error` (if it failed) and `done`; record the request's metrics."""
        if self._requests.pop(req.id, None) is not None and self.key is not None:
            self._ctx.key_streams[self.key] -= 1
        self._last_activity = asyncio.get_running_loop().time()
        failure = req.failure
        if failure is None and (done is None or done.reason == "error"):
            failure = engine_failure(req.id, done)
        reason = "error" if failure is not None else done.reason  # type: ignore[union-attr]
        stats = wire_stats(done)
        ttfa = done.stats.ttfa_s if done is not None else None
        rtf = done.stats.rtf if done is not None else None
        self._ctx.metrics.record_done(  # before any await: a disconnect cannot lose it
            reason, ttfa, rtf, queued_s=done.stats.queued_s if done is not None else None,
            stage_s=done.stats.stage_s if done is not None else None, ahead_s=req.least_lead_s)
        if failure is not None:
            await self._put_error(failure)
        await self._out.put((encode_server_message(done_message(req.id, reason, samples, stats)), 0.0))
        log.info("conn %s: request %s: done (%s), %d samples, ttfa %s ms, rtf %s", self.conn_id, req.id,
                 reason, samples, stats.get("ttfa_ms"), stats.get("rtf"))
