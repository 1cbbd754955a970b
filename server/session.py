"""One WebSocket connection: the protocol-v1 adapter over the request layer.

    frames ──► receive ──► client.open / request.feed / flush / end / cancel      (server/requests)
    request.events() ──► forward (per id) ──► out queue ──► send ──► frames
                                                             │ pings
    watchdog ◄── pongs: receipts for the audio (the layer's credit), keepalive and idle deadlines

The receive task rate-limits, decodes and dispatches client messages; each
forwarder turns one request's events into `audio`/`segment`/`flushed`/`error`/`done`
frames; the send task is the only writer of data frames. Admission, credit,
deadlines and metrics live in the request layer. When any task ends, the others
are cancelled and the client's requests end as disconnected.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .flow import Verdict, Watchdog, WatchdogConfig
from .limits import RateLimiter
from .requests import Audio, Done, Flushed, Request, RequestLayer, RequestSpec, Segment
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
    decode_client_message,
    done_message,
    encode_server_message,
    flushed_message,
    is_valid_id,
    segment_message,
)
from protocol.wire import unpack_map
from streaming.errors import ErrorCode

log = logging.getLogger(__name__)

_REQUEST_MESSAGES = ("text", "flush", "end", "cancel")  # types that act on a request in flight
_VERDICT_CLOSE = {"slow_consumer": 1008, "idle": 1008}
_VERDICT_CODE = {"slow_consumer": "slow_consumer", "idle": "idle_timeout"}


@dataclass(frozen=True)
class _Close:
    """Out-queue item: close the connection with this code once everything before it is sent."""

    code: int
    reason: str


_Item = tuple[bytes, float] | _Close  # (frame, seconds of audio in it) or a close


def wire_reason(done: Done) -> str:
    """`done.reason` on the wire: end, cancelled or error."""
    if done.error is not None:
        return "error"
    return "cancelled" if done.reason in ("cancelled", "disconnected") else done.reason


class Session:
    """Serves one connection until it closes; `run()` returns once everything it held is freed."""

    def __init__(self, ws: ServerConnection, layer: RequestLayer, ready_frame: bytes, conn_id: str,
                 address: str = "", key: int | None = None) -> None:
        cfg = layer.config
        self._ws = ws
        self._layer = layer
        self._ready_frame = ready_frame
        self._limits = cfg.limits
        self.conn_id = conn_id
        self.client = layer.client(conn_id=conn_id, address=address, key=key, owner=conn_id,
                                   max_requests=cfg.limits.max_ids_in_flight, on_fatal=self._fatal)
        self.ledger = self.client.ledger
        self._forwarders: set[asyncio.Task[None]] = set()
        self._out: asyncio.Queue[_Item] = asyncio.Queue(cfg.send_queue_frames)
        self._closing = False  # a fatal error or shutdown queued a _Close
        self._dropped = False  # the peer is being dropped: nothing more is queued for it
        self._shutdown: asyncio.Task[None] | None = None
        self._verdict: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._bucket = RateLimiter(cfg.max_messages_per_s, cfg.message_burst, cfg.rate_limit_strikes)
        self._last_activity = asyncio.get_running_loop().time()

    @property
    def busy(self) -> bool:
        """True while a request is in flight."""
        return self.client.busy

    async def run(self) -> None:
        """Send `ready`, then serve until a task ends; every request ends on the way out."""
        cfg = self._layer.config
        self._out.put_nowait((self._ready_frame, 0.0))
        dog = Watchdog(self._ws, self.ledger, WatchdogConfig(cfg.probe_interval, cfg.slow_consumer_timeout,
                       cfg.ping_interval, cfg.ping_timeout, cfg.idle_timeout), self.conn_id, self._idle_since)
        receiver = asyncio.create_task(self._receive(), name=f"{self.conn_id} receive")
        sender = asyncio.create_task(self._send(), name=f"{self.conn_id} send")
        watchdog = asyncio.create_task(dog.run(), name=f"{self.conn_id} watchdog")
        try:
            await asyncio.wait((receiver, sender, watchdog, self._verdict), return_when=asyncio.FIRST_COMPLETED)
            verdict = self._verdict.result() if self._verdict.done() else None
            if verdict is None and watchdog.done() and not watchdog.cancelled() and watchdog.exception() is None:
                verdict = watchdog.result()
            if verdict is not None:
                await self._terminate(verdict, sender)
            elif receiver.done() and self._closing and not sender.done():
                # A fatal error: let the send task deliver the `error` and the close frame.
                await asyncio.wait((sender,), timeout=cfg.close_timeout)
            for task in (receiver, sender, watchdog):  # a bug in a task: the server logs it and closes with 1011
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self._release(receiver, sender, watchdog)

    def _idle_since(self) -> float | None:
        return None if self.client.busy else self._last_activity

    def _fatal(self, error: ProtocolError) -> None:
        """The request layer gave up on this client (slow consumer): drop the connection."""
        self._dropped = True  # the requests' own errors would be noise: one error for the connection says it
        if not self._verdict.done():
            self._verdict.set_result(Verdict(error.code, error.message))

    def shutdown(self, exc: ProtocolError | None = None) -> None:
        """Queue `exc` (default `shutting_down`, 1001) and its close after the frames already queued."""
        if not self._closing:
            self._closing = True
            exc = exc or ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is stopping; reconnect later")
            self._shutdown = asyncio.create_task(self._queue_close(exc), name=f"{self.conn_id} shutdown")

    async def _queue_close(self, exc: ProtocolError) -> None:
        await self._put_error(exc)
        await self._out.put(_Close(exc.close_code or 1001, exc.code))

    async def _terminate(self, verdict: Verdict, sender: asyncio.Task[None]) -> None:
        """The peer stopped reading, vanished or idled: end every request now, say why (if it can hear), close."""
        cfg = self._layer.config
        self._closing = True
        self.ledger.close()
        for request in self.client.requests.values():
            request.disconnect()
        log.warning("conn %s: %s: %s; cancelled %d request(s)", self.conn_id, verdict.kind, verdict.message,
                    len(self.client.requests))
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        code = _VERDICT_CODE.get(verdict.kind)
        if code is None:  # the peer answers nothing: no handshake to wait for
            self._ws.transport.abort()
            return
        try:
            self._layer.metrics.error(code)
            frame = encode_server_message(ProtocolError(code, verdict.message).to_message())
            await asyncio.wait_for(self._ws.send(frame), cfg.close_timeout)
            await asyncio.wait_for(self._ws.close(_VERDICT_CLOSE[verdict.kind], code), cfg.close_timeout)
        except (ConnectionClosed, TimeoutError):
            pass
        if self._ws.close_code is None:  # the peer never completed the closing handshake
            self._ws.transport.abort()

    async def _release(self, *tasks: asyncio.Task[None]) -> None:
        """End the client's requests and the connection's tasks, and wait until they are gone."""
        await self.client.close()
        forwarders = list(self._forwarders)
        if self._shutdown is not None:
            tasks += (self._shutdown,)
        for task in (*tasks, *forwarders):
            task.cancel()
        await asyncio.gather(*tasks, *forwarders, return_exceptions=True)

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
        self._layer.metrics.error(exc.code)
        await self._out.put((encode_server_message(exc.to_message()), 0.0))

    async def _forward(self, request: Request) -> None:
        """One request's events as frames, in order; `done` last."""
        async for event in request.events():
            if self._dropped:
                continue
            if isinstance(event, Audio):
                frame = audio_message(request.id, event.seq, event.first_sample, event.data)
                await self._out.put((encode_server_message(frame), event.seconds))
            elif isinstance(event, Segment):
                await self._out.put((encode_server_message(
                    segment_message(request.id, event.text, event.start, event.end)), 0.0))
            elif isinstance(event, Flushed):
                await self._out.put((encode_server_message(flushed_message(request.id)), 0.0))
            elif isinstance(event, Done):
                self._last_activity = asyncio.get_running_loop().time()
                if event.error is not None:
                    await self._put_error(event.error)
                await self._out.put((encode_server_message(
                    done_message(request.id, wire_reason(event), event.samples, event.stats)), 0.0))

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
        cfg = self._layer.config
        msg = self._peek(frame)
        req_id = msg.get("id") if is_valid_id(msg.get("id")) else None
        fatal = verdict == "close"
        if fatal:
            log.warning("conn %s: closing: %d messages refused in a row (rate limit)", self.conn_id,
                        self._bucket.refused_in_a_row)
        raise ProtocolError(ErrorCode.RATE_LIMITED, f"more than {cfg.max_messages_per_s:g} messages per second "
                            f"(burst {cfg.message_burst}); this message was dropped", id=req_id,
                            fatal=fatal, close_code=1008 if fatal else None)

    async def _refuse(self, exc: ProtocolError, frame: bytes | str) -> None:
        """Answer a refused message; a bad text/flush/end/cancel for an id in flight ends that request."""
        log.info("conn %s: refused a message (id %s): %s: %s", self.conn_id, exc.id, exc.code, exc.message)
        request = self.client.get(exc.id) if exc.id is not None else None
        if request is not None and not exc.fatal and self._peek(frame).get("type") in _REQUEST_MESSAGES:
            request.fail(exc)
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
        request = self.client.get(msg.id)
        if request is None:
            raise ProtocolError(ErrorCode.UNKNOWN_ID, f"id: {msg.id!r} is not in flight on this connection "
                                f"({len(self.client.requests)} request(s) in flight)", id=msg.id)
        if isinstance(msg, Cancel):
            request.cancel()
        elif request.failure is None:
            try:
                if isinstance(msg, Text):
                    await request.feed(msg.text)
                elif isinstance(msg, Flush):
                    await request.flush()
                else:
                    await request.end()
            except ProtocolError as exc:
                request.fail(exc)

    async def _open(self, msg: Speak | Start) -> None:
        if self._closing:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is stopping and takes no new requests; "
                                "reconnect later", id=msg.id, fatal=False)
        spec = RequestSpec(id=msg.id, text=msg.text if isinstance(msg, Speak) else None, voice=msg.voice,
                           sampling=msg.sampling, policy=msg.policy, encoding=msg.encoding,
                           sample_rate=msg.sample_rate)
        request = await self.client.open(spec)
        task = asyncio.create_task(self._forward(request), name=f"{self.conn_id} forward {msg.id}")
        self._forwarders.add(task)
        task.add_done_callback(self._forwarders.discard)
