"""One WebSocket connection: a receive task, a send task, and one pump task per request id.

    frames ──► receive ──► engine.submit / handle.feed ...
                                  │
    engine handles ──► pump (per id) ──► out queue ──► send ──► frames

The receive task decodes and dispatches client messages; each pump turns its
engine stream's events into `audio`/`segment`/`done` frames; the send task is
the only writer to the socket. When the receive or the send task ends, the
other is cancelled and every engine stream of the connection is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streaming.engine import Engine, EngineOverloaded, SpeechRequest, StreamHandle
from streaming.errors import TextError, VoiceError, WeightsError
from streaming.events import AudioChunk, SegmentSpan, StreamDone
from streaming.voices import Voice, load_voice

from .config import ServerConfig
from .metrics import ServerMetrics
from .protocol import (
    ERROR_CODES,
    Cancel,
    ClientMessage,
    End,
    Flush,
    ProtocolError,
    Speak,
    Start,
    Text,
    audio_message,
    check_request_chars,
    decode_client_message,
    done_message,
    encode_server_message,
    pcm_encode,
    segment_message,
)
from .protocol_wire import unpack_map

log = logging.getLogger(__name__)

_REQUEST_MESSAGES = ("text", "flush", "end", "cancel")  # types that act on a request in flight
_ENGINE_CODES = {"bad_text": "bad_field"}  # engine error codes that have a protocol name of their own
_VOICE_NAME = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?")  # names only: clients never pass paths


@dataclass(frozen=True)
class ServerContext:
    """What every session shares: the engine, the options, the metrics and the `ready` frame."""

    engine: Engine
    config: ServerConfig
    metrics: ServerMetrics
    ready_frame: bytes  # encoded once at startup

    async def resolve_voice(self, name: str | None, req_id: str) -> Voice | None:
        """The voice a request asked for (or the default), loaded off the event loop; unknown_voice if none."""
        name = name if name is not None else self.config.default_voice
        if name is None:
            return None
        if not _VOICE_NAME.fullmatch(name):
            raise ProtocolError("unknown_voice", f"voice: {name[:40]!r} is not a voice name (letters, digits, "
                                "- and _, optionally one /, e.g. v2/en_speaker_6)", id=req_id)
        try:
            return await asyncio.to_thread(load_voice, name, voices_dir=self.config.voices_dir,
                                           local_files_only=self.config.offline)
        except (VoiceError, WeightsError) as exc:
            raise ProtocolError("unknown_voice", str(exc).splitlines()[0], id=req_id) from None


@dataclass(frozen=True)
class _Close:
    """Out-queue item: close the connection with this code once everything before it is sent."""

    code: int
    reason: str


@dataclass(eq=False)
class _Request:
    """Server-side state of one request id in flight."""

    id: str
    kind: str  # "speak" or "start"
    encoding: str  # pcm_s16le | pcm_f32le
    handle: StreamHandle
    chars: int = 0  # characters received so far (start requests)
    ended: bool = False  # `end` received
    failure: ProtocolError | None = None  # set when the request must finish with `error` + `done(error)`
    pump: asyncio.Task[None] | None = None


class Session:
    """Serves one connection until it closes; `run()` returns once everything it held is freed."""

    def __init__(self, ws: ServerConnection, ctx: ServerContext, conn_id: str) -> None:
        self._ws = ws
        self._ctx = ctx
        self._limits = ctx.config.limits
        self.conn_id = conn_id
        self._requests: dict[str, _Request] = {}
        self._out: asyncio.Queue[bytes | _Close] = asyncio.Queue(ctx.config.send_queue_frames)
        self._closing = False  # a fatal error or shutdown queued a _Close
        self._shutdown: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Send `ready`, then serve until either side ends; cancel every stream on the way out."""
        self._out.put_nowait(self._ctx.ready_frame)
        receiver = asyncio.create_task(self._receive(), name=f"{self.conn_id} receive")
        sender = asyncio.create_task(self._send(), name=f"{self.conn_id} send")
        try:
            await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
            if receiver.done() and self._closing and not sender.done():
                # A fatal error: let the send task deliver the `error` and the close frame.
                await asyncio.wait((sender,), timeout=self._ctx.config.close_timeout)
        finally:
            await self._release(receiver, sender)

    def shutdown(self) -> None:
        """The server is stopping: queue `shutting_down` and a 1001 close after the frames already queued."""
        if not self._closing:
            self._closing = True
            exc = ProtocolError("shutting_down", "the server is stopping; reconnect later")
            self._shutdown = asyncio.create_task(self._queue_close(exc), name=f"{self.conn_id} shutdown")

    async def _queue_close(self, exc: ProtocolError) -> None:
        await self._put_error(exc)
        await self._out.put(_Close(exc.close_code or 1001, exc.code))

    async def _release(self, *tasks: asyncio.Task[None]) -> None:
        """Cancel the connection's tasks and engine streams and wait until they are gone."""
        pumps = [req.pump for req in self._requests.values() if req.pump is not None]
        if self._shutdown is not None:
            tasks += (self._shutdown,)
        for req in self._requests.values():
            req.handle.cancel()
        if self._requests:
            log.info("conn %s: closed with %d request(s) in flight; cancelled %s",
                     self.conn_id, len(self._requests), ", ".join(self._requests))
        self._requests.clear()
        for task in (*tasks, *pumps):
            task.cancel()
        await asyncio.gather(*tasks, *pumps, return_exceptions=True)

    # --- sending -------------------------------------------------------------------

    async def _send(self) -> None:
        """The only writer: drain the out queue into the socket until a _Close or a closed socket."""
        try:
            while True:
                item = await self._out.get()
                if isinstance(item, _Close):
                    await self._ws.close(item.code, item.reason)
                    return
                await self._ws.send(item)
        except ConnectionClosed as exc:
            log.debug("conn %s: send stopped, connection closed (%s)", self.conn_id, exc)

    async def _put_error(self, exc: ProtocolError) -> None:
        self._ctx.metrics.errors[exc.code] += 1
        await self._out.put(encode_server_message(exc.to_message()))

    # --- receiving -----------------------------------------------------------------

    async def _receive(self) -> None:
        """Decode and dispatch every frame; on a fatal error queue `error` + close and stop reading."""
        try:
            async for frame in self._ws:
                try:
                    await self._dispatch(decode_client_message(frame, self._limits))
                except ProtocolError as exc:
                    await self._refuse(exc, frame)
                    if exc.fatal and not self._closing:
                        self._closing = True
                        await self._out.put(_Close(exc.close_code or 1008, exc.code))
                    if exc.fatal:
                        return
        except ConnectionClosed as exc:
            log.info("conn %s: connection lost (%s)", self.conn_id, exc)

    async def _refuse(self, exc: ProtocolError, frame: bytes | str) -> None:
        """Answer a refused message; a bad text/flush/end/cancel for an id in flight ends that request."""
        log.info("conn %s: refused a message (id %s): %s: %s", self.conn_id, exc.id, exc.code, exc.message)
        req = self._requests.get(exc.id) if exc.id is not None else None
        if req is not None and not exc.fatal and self._frame_type(frame) in _REQUEST_MESSAGES:
            self._fail(req, exc)
            return
        await self._put_error(exc)

    def _frame_type(self, frame: bytes | str) -> Any:
        """The `type` of a frame that failed validation after unpacking, else None."""
        if isinstance(frame, str):
            return None
        lim = self._limits
        try:
            msg = unpack_map(frame, max_bytes=lim.max_frame_bytes, max_map_keys=lim.max_map_keys,
                             max_array_items=lim.max_array_items, max_depth=lim.max_depth)
        except ProtocolError:
            return None
        return msg.get("type")

    async def _dispatch(self, msg: ClientMessage) -> None:
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
                self._apply(req, msg)
            except ProtocolError as exc:
                self._fail(req, exc)

    def _apply(self, req: _Request, msg: Text | Flush | End) -> None:
        """Feed a start request its text, flush or end; ProtocolError if the request cannot take it."""
        if req.kind != "start":
            raise ProtocolError("bad_field", f"type: {msg.TYPE} applies only to requests opened with start; "
                                f"{req.id!r} was opened with {req.kind}", id=req.id)
        if req.ended:
            raise ProtocolError("bad_field", f"type: {msg.TYPE} after end for request {req.id!r}", id=req.id)
        try:
            if isinstance(msg, Text):
                req.chars += len(msg.text)
                check_request_chars(req.id, req.chars, self._limits)
                req.handle.feed(msg.text)
            elif isinstance(msg, Flush):
                req.handle.flush()
            else:
                req.ended = True
                req.handle.end()
        except TextError as exc:
            raise ProtocolError("bad_field", f"text: {exc}", id=req.id) from None

    def _fail(self, req: _Request, exc: ProtocolError) -> None:
        """End `req` with `exc`: its pump drops further audio and sends `error` then `done(error)`."""
        if req.failure is None:
            log.info("conn %s: request %s fails: %s: %s", self.conn_id, req.id, exc.code, exc.message)
            exc.id = req.id
            req.failure = exc
            req.handle.cancel()

    async def _open(self, msg: Speak | Start) -> None:
        """Check a speak/start, resolve its voice and submit it to the engine; start its pump."""
        if msg.id in self._requests:
            raise ProtocolError("duplicate_id", f"id: {msg.id!r} is already in flight on this connection",
                                id=msg.id)
        if len(self._requests) >= self._limits.max_ids_in_flight:
            raise ProtocolError("too_many_ids", f"id: {msg.id!r} would be request {len(self._requests) + 1} in "
                                f"flight; max_ids_in_flight is {self._limits.max_ids_in_flight}", id=msg.id)
        voice = await self._ctx.resolve_voice(msg.voice, msg.id)
        speech = SpeechRequest(text=msg.text if isinstance(msg, Speak) else None, voice=voice,
                               sampling=msg.sampling, policy=msg.policy, request_id=f"{self.conn_id}/{msg.id}")
        try:
            handle = self._ctx.engine.submit(speech, loop=asyncio.get_running_loop())
        except EngineOverloaded as exc:
            raise ProtocolError("overloaded", f"the server is full ({self._ctx.config.max_streams} streams and "
                                f"{self._ctx.config.max_queue} queued); retry after {exc.retry_after_ms} ms",
                                id=msg.id, retry_after_ms=int(exc.retry_after_ms)) from None
        except TextError as exc:
            raise ProtocolError("bad_field", f"text: {exc}", id=msg.id) from None
        req = _Request(msg.id, msg.TYPE, msg.encoding, handle)
        self._requests[msg.id] = req
        self._ctx.metrics.requests_total += 1
        req.pump = asyncio.create_task(self._pump(req), name=f"{self.conn_id} pump {msg.id}")
        log.info("conn %s: request %s: %s accepted (stream %s, voice %s, %s)", self.conn_id, msg.id, msg.TYPE,
                 handle.id, msg.voice or self._ctx.config.default_voice, msg.encoding)

    # --- per-request pump ------------------------------------------------------------

    async def _pump(self, req: _Request) -> None:
        """Forward one engine stream's events as frames, numbering audio; always ends with `done`."""
        seq = sample = 0
        done: StreamDone | None = None
        try:
            async for event in req.handle:
                if isinstance(event, StreamDone):
                    done = event
                    break
                if req.failure is not None:
                    continue
                if isinstance(event, AudioChunk):
                    if event.samples.size == 0:
                        continue
                    pcm = pcm_encode(event.samples, req.encoding)
                    frame = encode_server_message(audio_message(req.id, seq, sample, pcm))
                    seq, sample = seq + 1, sample + int(event.samples.size)
                elif isinstance(event, SegmentSpan):
                    frame = encode_server_message(
                        segment_message(req.id, event.text, event.start_sample, event.end_sample))
                else:
                    continue
                await self._put_frame(req, frame)
        except Exception as exc:  # noqa: BLE001 - one request's bug must not take the connection down
            log.exception("conn %s: request %s: pump failed", self.conn_id, req.id)
            req.handle.cancel()
            req.failure = req.failure or ProtocolError("internal", f"server error: {type(exc).__name__}")
        await self._finish(req, done, sample)

    async def _put_frame(self, req: _Request, frame: bytes) -> None:
        """Queue a frame; while the out queue is full, the engine pauses this stream (backpressure)."""
        if not self._out.full():
            self._out.put_nowait(frame)
            return
        req.handle.pause()
        try:
            await self._out.put(frame)
        finally:
            req.handle.resume()

    async def _finish(self, req: _Request, done: StreamDone | None, samples: int) -> None:
        """Retire the id, then queue `error` (if it failed) and `done`; record the request's metrics."""
        self._requests.pop(req.id, None)
        failure = req.failure
        if failure is None and (done is None or done.reason == "error"):
            failure = _engine_failure(req.id, done)
        reason = "error" if failure is not None else done.reason  # type: ignore[union-attr]
        stats = _wire_stats(done)
        if failure is not None:
            await self._put_error(failure)
        await self._out.put(encode_server_message(done_message(req.id, reason, samples, stats)))
        ttfa = done.stats.ttfa_s if done is not None else None
        rtf = done.stats.rtf if done is not None else None
        self._ctx.metrics.record_done(reason, ttfa, rtf)
        log.info("conn %s: request %s: done (%s), %d samples, ttfa %s ms, rtf %s", self.conn_id, req.id,
                 reason, samples, stats.get("ttfa_ms"), stats.get("rtf"))


def _engine_failure(req_id: str, done: StreamDone | None) -> ProtocolError:
    """The `error` for a stream the engine ended with reason "error" (or that ended without `done`)."""
    if done is None:
        return ProtocolError("internal", "server error: the stream ended without a result", id=req_id)
    code = _ENGINE_CODES.get(done.error_code or "", done.error_code or "internal")
    if code not in ERROR_CODES or ERROR_CODES[code] is not None:
        code = "internal"
    return ProtocolError(code, done.error or "the engine failed this request", id=req_id)


def _wire_stats(done: StreamDone | None) -> dict[str, float]:
    """StreamStats as the flat str -> number map `done.stats` carries (absent values left out)."""
    if done is None:
        return {}
    stats: dict[str, float] = {}
    for key, value in done.stats.as_dict().items():
        if isinstance(value, dict):
            suffix = "_ms" if key == "stage_ms" else ""
            prefix = "" if key == "stage_ms" else f"{key}_"
            stats.update({f"{prefix}{k}{suffix}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            stats[key] = value
    return stats
