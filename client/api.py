"""Async client for protocol v1: one WebSocket, many requests in flight, typed events out.

    client = await BarkStreamClient.connect("ws://localhost:8765/v1/stream")
    async with client:
        async for event in client.speak("Hello there."):
            ...  # AudioChunk, Segment, then one Done
        audio, done = await collect(client.speak("Once more."))

One receive task reads every frame and routes it by `id` into that request's
queue; each `speak()` / `stream_text()` generator drains its own queue. The wire
format (msgpack maps, PCM encodings) lives in the `protocol` package.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from protocol import (
    COMPRESSED_ENCODINGS,
    DEFAULT_SAMPLE_RATE,
    ENCODING_SAMPLE_RATES,
    ENCODINGS,
    MAX_SERVER_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_server_message,
    encode_client_message,
    is_valid_id,
    pcm_decode,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://localhost:8765/v1/stream"


class ClientError(Exception):
    """Base class of the errors this client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached, refused the handshake, or never said `ready`."""


class ConnectionLost(ClientError):
    """The connection closed while a request was still in flight; `code` is the close code when one came
    (1012: the server restarts, 1001: going away, 1013: try again later, 1011: it failed)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ServerError(ClientError):
    """The server answered a request with an `error` message."""

    def __init__(self, code: str, message: str, *, id: str | None = None, retry_after_ms: int | None = None) -> None:  # noqa: A002
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class ServerInfo:
    """What the server announced in `ready`."""

    protocol: int
    sample_rate: int  # Hz: the model's own rate, and the default of every request
    channels: int
    encodings: tuple[str, ...]
    model: str
    voices: tuple[str, ...]
    limits: dict[str, int]
    encoding_sample_rates: dict[str, tuple[int, ...]] = field(default_factory=dict)  # rates per encoding
    voice_aliases: dict[str, str] = field(default_factory=dict)  # e.g. alloy -> v2/en_speaker_0

    def rates(self, encoding: str) -> tuple[int, ...]:
        """The sample rates `encoding` may be asked for (a server that does not say: its own rate only)."""
        return self.encoding_sample_rates.get(encoding, (self.sample_rate,))


@dataclass(frozen=True)
class AudioChunk:
    """Audio for request `id`: PCM samples [sample, sample + len(samples)), or, for a compressed
    encoding (ogg_opus, mp3), the next bytes of one file (`samples` is then empty)."""

    id: str
    seq: int  # 0, 1, 2, ... per request
    sample: int  # offset of samples[0] in the request's audio (compressed: samples encoded before it)
    samples: np.ndarray = field(repr=False)  # float32 [n] in [-1, 1], at the request's sample rate
    data: bytes = field(default=b"", repr=False)  # the bytes as received (PCM or the compressed file's next part)


@dataclass(frozen=True)
class Segment:
    """The text that samples [start_sample, end_sample) of request `id` speak."""

    id: str
    text: str
    start_sample: int
    end_sample: int


@dataclass(frozen=True)
class Done:
    """The last event of a request."""

    id: str
    reason: str  # "end", "cancelled" or "error"
    samples: int  # samples the server sent for this request
    stats: dict[str, Any]  # server timings: ttfa_ms, rtf, ...


@dataclass(frozen=True)
class Flushed:
    """The server applied a `flush` of request `id`: the text so far is queued for synthesis."""

    id: str


Event = Union[AudioChunk, Segment, Flushed, Done]


@dataclass
class _Closed:
    """Queue item: the connection ended before this request did."""

    reason: str
    code: int | None = None  # the close code received, if any


@dataclass
class _Request:
    """Client-side state of one request in flight."""

    id: str
    encoding: str
    sample_rate: int = DEFAULT_SAMPLE_RATE
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)  # raw messages, _Closed or exceptions
    next_seq: int = 0  # seq the next audio message must carry
    next_sample: int = 0  # offset the next audio message must start at
    done: bool = False


def _parse_ready(msg: Mapping[str, Any], url: str) -> ServerInfo:
    if msg["type"] != "ready":
        raise ConnectionFailed(f"{url}: expected `ready` as the first message, got `{msg['type']}`")
    if msg["protocol"] != PROTOCOL_VERSION:
        raise ConnectionFailed(f"{url} speaks protocol {msg['protocol']}; this client speaks {PROTOCOL_VERSION}")
    rates = msg.get("encoding_sample_rates") or {}
    return ServerInfo(msg["protocol"], msg["sample_rate"], msg["channels"], tuple(msg["encodings"]),
                      msg["model"], tuple(msg["voices"]), dict(msg["limits"]),
                      {str(k): tuple(v) for k, v in rates.items() if isinstance(v, list)},
                      {str(k): str(v) for k, v in (msg.get("voice_aliases") or {}).items()})


async def _open_socket(url: str, open_timeout: float, headers: Mapping[str, str] | None,
                       ssl: Any = None) -> ClientConnection:
    """Open the WebSocket, turning every way it can fail into one `ConnectionFailed` line."""
    tls = {"ssl": ssl} if ssl is not None and url.lower().startswith("wss:") else {}  # e.g. a private CA
    try:
        return await ws_connect(url, open_timeout=open_timeout, additional_headers=headers,
                                max_size=MAX_SERVER_FRAME_BYTES, compression=None, **tls)
    except InvalidURI as e:
        raise ConnectionFailed(f"{url!r} is not a WebSocket URL (expected ws://HOST:PORT/v1/stream)") from e
    except InvalidStatus as e:
        status = e.response.status_code
        hint = {401: "; check --api-key", 403: "; check --api-key", 404: "; is the path /v1/stream?"}.get(status, "")
        raise ConnectionFailed(f"{url} refused the WebSocket handshake: HTTP {status}{hint}") from e
    except InvalidHandshake as e:
        raise ConnectionFailed(f"{url} is not a bark-stream server: {e}") from e
    except ConnectionRefusedError as e:
        raise ConnectionFailed(f"cannot reach {url}: connection refused; is `python -m server` running?") from e
    except TimeoutError as e:
        raise ConnectionFailed(f"cannot reach {url}: no answer within {open_timeout:g} s") from e
    except OSError as e:
        raise ConnectionFailed(f"cannot reach {url}: {e.strerror or e}") from e


async def _read_ready(ws: ClientConnection, url: str, timeout: float) -> ServerInfo:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        return _parse_ready(decode_server_message(frame), url)
    except TimeoutError as e:
        raise ConnectionFailed(f"{url} did not send `ready` within {timeout:g} s") from e
    except ConnectionClosed as e:
        raise ConnectionFailed(f"{url} closed the connection before `ready`: {_close_reason(e)}") from e
    except ProtocolError as e:
        raise ConnectionFailed(f"{url} sent an invalid `ready`: {e}") from e


def _close_reason(e: ConnectionClosed) -> str:
    frame = e.rcvd or e.sent
    if frame is None:
        return "no close frame"
    return f"code {frame.code}" + (f" ({frame.reason})" if frame.reason else "")


class BarkStreamClient:
    """One connection to a bark-stream server; make one with `await BarkStreamClient.connect(url)`."""

    def __init__(self, ws: ClientConnection, info: ServerInfo, url: str) -> None:
        self.url = url
        self.info = info  # what the server announced in `ready`
        self._ws = ws
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._closing = False  # close() was called
        self._closed_reason: str | None = None  # set once the receive task has ended
        self._receiver = asyncio.create_task(self._receive(), name=f"bark-stream receive {url}")

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        open_timeout: float = 10.0,
        additional_headers: Mapping[str, str] | None = None,
        ssl: Any = None,
    ) -> BarkStreamClient:
        """Open the WebSocket and wait for `ready`; raises `ConnectionFailed` with a one-line reason.
        `ssl`: an `ssl.SSLContext` for wss:// URLs (e.g. one trusting a private CA); None: the system's."""
        ws = await _open_socket(url, open_timeout, additional_headers, ssl)
        try:
            info = await _read_ready(ws, url, open_timeout)
        except BaseException:
            await ws.close()
            raise
        log.debug("connected to %s: model %s, %d voices", url, info.model, len(info.voices))
        return cls(ws, info, url)

    @property
    def closed(self) -> bool:
        """True once the connection has ended or close() was called: no new request can start on it."""
        return self._closed_reason is not None or self._closing

    @property
    def in_flight(self) -> tuple[str, ...]:
        """Ids of the requests whose events are still being read."""
        return tuple(self._requests)

    async def speak(
        self,
        text: str,
        *,
        id: str | None = None,  # noqa: A002 - the wire field is called id
        voice: str | None = None,
        encoding: str = "pcm_s16le",
        params: Mapping[str, Any] | None = None,
        sample_rate: int | None = None,
    ) -> AsyncIterator[Event]:
        """Synthesise `text`; yield AudioChunk/Segment events, then one Done; ServerError on `error`.

        The request is sent when iteration starts; leaving the loop early cancels it.
        `params` uses the wire keys (text_temp, waveform_temp, top_k, top_p, seed, ...).
        `sample_rate` (None: the server's own, 24 kHz) must be one of `info.rates(encoding)`.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text: expected a non-empty string")
        req = self._open_request(id, encoding, sample_rate)
        try:
            await self._send(self._request_message("speak", req, voice, params, text=text))
            async for event in self._events(req):
                yield event
        finally:
            await self._end_request(req)

    async def stream_text(
        self,
        pieces: AsyncIterable[str] | Iterable[str],
        *,
        id: str | None = None,  # noqa: A002
        voice: str | None = None,
        encoding: str = "pcm_s16le",
        params: Mapping[str, Any] | None = None,
        flush_lines: bool = True,
        sample_rate: int | None = None,
    ) -> AsyncIterator[Event]:
        """Synthesise text that arrives in pieces (start, text..., end), yielding events as for `speak`.

        `pieces` may be an async iterable (tokens from an LLM) or a plain one.

        With `flush_lines`, a piece ending in a newline is followed by `flush`, so the
        server speaks each line without waiting for more text.
        """
        req = self._open_request(id, encoding, sample_rate)
        feeder: asyncio.Task[None] | None = None
        try:
            await self._send(self._request_message("start", req, voice, params))
            feeder = asyncio.create_task(self._feed(req, pieces, flush_lines), name=f"bark-stream feed {req.id}")
            async for event in self._events(req):
                yield event
        finally:
            if feeder is not None:
                feeder.cancel()
            await self._end_request(req)

    async def keepalive(self) -> None:
        """Tell the server this idle connection is still wanted (resets its idle timeout; rate-limited
        like any message). WebSocket pings only prove liveness and do not count as activity."""
        await self._send({"type": "keepalive"})

    async def cancel(self, id: str) -> bool:  # noqa: A002
        """Ask the server to stop request `id`; its events end with Done(reason="cancelled").

        Returns False (and sends nothing) when `id` is not in flight.
        """
        if id not in self._requests:
            log.debug("cancel: %s is not in flight", id)
            return False
        await self._send({"type": "cancel", "id": id})
        return True

    async def close(self) -> None:
        """Close the connection; requests still in flight raise ConnectionLost. Safe to call twice."""
        self._closing = True
        await self._ws.close()
        await self._receiver

    async def __aenter__(self) -> BarkStreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests ----------------------------------------------------------------

    def _open_request(self, req_id: str | None, encoding: str, sample_rate: int | None = None) -> _Request:
        """Check the caller's id, encoding and sample rate and register the request's queue."""
        if self._closed_reason is not None or self._closing:
            raise ConnectionLost(f"{self.url}: {self._closed_reason or 'closed by the client'}")
        if encoding not in ENCODINGS or encoding not in self.info.encodings:
            raise ValueError(f"encoding: {encoding!r} is not one of {', '.join(self.info.encodings)}")
        rates = self.info.rates(encoding)
        if sample_rate is not None and sample_rate not in rates:
            raise ValueError(f"sample_rate: {encoding} takes {', '.join(map(str, rates))}, not {sample_rate!r}")
        if req_id is None:
            req_id = next(f"r{n}" for n in self._ids if f"r{n}" not in self._requests)
        elif not is_valid_id(req_id):
            raise ValueError(f"id: {req_id!r:.80} must be 1-64 characters from letters, digits and - _ . :")
        if req_id in self._requests:
            raise ValueError(f"id: {req_id!r} is already in flight on this connection")
        req = _Request(req_id, encoding, sample_rate or self.info.sample_rate)
        self._requests[req_id] = req
        return req

    @staticmethod
    def _request_message(kind: str, req: _Request, voice: str | None, params: Mapping[str, Any] | None,
                         **extra: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": kind, "id": req.id, **extra, "encoding": req.encoding}
        if req.sample_rate != DEFAULT_SAMPLE_RATE:  # sent only when asked for: older servers lack the field
            msg["sample_rate"] = req.sample_rate
        if voice is not None:
            msg["voice"] = voice
        if params:
            msg["params"] = dict(params)
        return msg

    async def _send(self, msg: Mapping[str, Any]) -> None:
        try:
            await self._ws.send(encode_client_message(msg))
        except ConnectionClosed as e:
            raise ConnectionLost(f"{self.url}: connection lost ({_close_reason(e)})",
                                 code=e.rcvd.code if e.rcvd is not None else None) from e

    async def _feed(self, req: _Request, pieces: AsyncIterable[str] | Iterable[str], flush_lines: bool) -> None:
        """Send `pieces` as text messages, then end; a failure is delivered to the request's reader."""
        max_chars = int(self.info.limits.get("max_text_chars", 4096))
        try:
            async for piece in _aiter(pieces):
                if not isinstance(piece, str):
                    raise TypeError(f"stream_text: pieces must be str, got {type(piece).__name__}")
                for i in range(0, len(piece), max_chars):
                    await self._send({"type": "text", "id": req.id, "text": piece[i : i + max_chars]})
                if flush_lines and piece.endswith("\n"):
                    await self._send({"type": "flush", "id": req.id})
            await self._send({"type": "end", "id": req.id})
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            req.queue.put_nowait(e)

    async def _events(self, req: _Request) -> AsyncIterator[Event]:
        """Turn the request's queued messages into events until Done; raise on error or loss."""
        while True:
            item = await req.queue.get()
            if isinstance(item, _Closed):
                raise ConnectionLost(f"{self.url}: {item.reason} while request {req.id} was in flight",
                                     code=item.code)
            if isinstance(item, BaseException):
                raise item
            if item.get("type") == "error":  # refused at open (nothing to cancel) or ended by the server
                req.done = True
            event = _to_event(req, item)
            if isinstance(event, Done):
                req.done = True
            yield event
            if req.done:
                return

    async def _end_request(self, req: _Request) -> None:
        """Unregister `req`; if it never got Done, tell the server to cancel it."""
        self._requests.pop(req.id, None)
        if req.done or self._closed_reason is not None or self._closing:
            return
        try:
            await self._send({"type": "cancel", "id": req.id})
        except ConnectionLost:
            pass

    # --- receiving ---------------------------------------------------------------

    async def _receive(self) -> None:
        """Read every frame and route it to its request, until the connection ends."""
        reason = "connection closed"
        code: int | None = None
        try:
            async for frame in self._ws:
                self._dispatch(decode_server_message(frame))
            reason = f"closed by the server (code {self._ws.close_code})"
            code = self._ws.close_code
        except ConnectionClosed as e:
            reason = f"connection lost ({_close_reason(e)})"
            code = e.rcvd.code if e.rcvd is not None else None
        except ProtocolError as e:
            reason = f"the server sent an invalid frame ({e})"
            code = 1002  # closed by us for a protocol error: nothing a retry elsewhere would fix
            log.error("%s: %s; closing", self.url, reason)
            await self._ws.close(1002, "invalid frame")
        finally:
            if self._closing:
                reason = "closed by the client"
            self._closed_reason = reason
            for req in self._requests.values():
                req.queue.put_nowait(_Closed(reason, code))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "error" and "id" not in msg:
            log.warning("%s: server error %s: %s", self.url, msg["code"], msg["message"])
            return
        if kind == "ready":
            log.warning("%s: ignoring a second `ready`", self.url)
            return
        req = self._requests.get(msg["id"])
        if req is None:
            log.debug("%s: dropping %s for %s (not in flight)", self.url, kind, msg["id"])
            return
        req.queue.put_nowait(msg)


async def _aiter(items: AsyncIterable[str] | Iterable[str]) -> AsyncIterator[str]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _to_event(req: _Request, msg: dict[str, Any]) -> Event:
    """One server message for `req` as an event; ServerError for `error`."""
    kind = msg["type"]
    if kind == "error":
        raise ServerError(msg["code"], msg["message"], id=req.id, retry_after_ms=msg.get("retry_after_ms"))
    if kind == "segment":
        return Segment(req.id, msg["text"], msg["start_sample"], msg["end_sample"])
    if kind == "flushed":
        return Flushed(req.id)
    if kind == "done":
        return Done(req.id, msg["reason"], msg["samples"], dict(msg["stats"]))
    assert kind == "audio", kind
    compressed = req.encoding in COMPRESSED_ENCODINGS  # offsets only never go back: bytes are not samples
    if msg["seq"] != req.next_seq or (msg["sample"] < req.next_sample if compressed
                                      else msg["sample"] != req.next_sample):
        raise ClientError(f"request {req.id}: audio seq {msg['seq']} at sample {msg['sample']} arrived; "
                          f"expected seq {req.next_seq} at sample {req.next_sample}")
    if compressed:
        samples = np.zeros(0, np.float32)
        req.next_sample = msg["sample"]
    else:
        try:
            samples = pcm_decode(msg["pcm"], req.encoding)
        except ProtocolError as e:
            raise ClientError(f"request {req.id}: {e}") from e
        req.next_sample += samples.size
    req.next_seq += 1
    return AudioChunk(req.id, msg["seq"], msg["sample"], samples, msg["pcm"])


async def collect(events: AsyncIterable[Event]) -> tuple[np.ndarray, Done]:
    """Drain a request's events into (float32 [n] audio, its Done)."""
    chunks: list[np.ndarray] = []
    done: Done | None = None
    async for event in events:
        if isinstance(event, AudioChunk):
            chunks.append(event.samples)
        elif isinstance(event, Done):
            done = event
    if done is None:
        raise ClientError("the events ended without a `done`")
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), done


async def collect_bytes(events: AsyncIterable[Event]) -> tuple[bytes, Done]:
    """Drain a request's events into (the bytes as received, its Done): for a compressed encoding
    (ogg_opus, mp3) that is the whole file."""
    parts: list[bytes] = []
    done: Done | None = None
    async for event in events:
        if isinstance(event, AudioChunk):
            parts.append(event.data)
        elif isinstance(event, Done):
            done = event
    if done is None:
        raise ClientError("the events ended without a `done`")
    return b"".join(parts), done
