"""Open connections to the HTTP port, capped.

aiohttp bounds what one connection may send (head sizes, body size) and how long it may sit without a request
(its keep-alive timer, which also runs before the first request), but not how many connections are open at
once: a client opening thousands of idle or slowly-sending connections would exhaust the process's file
descriptors, which the WebSocket and Wyoming listeners share. `ConnectionCap` is the listener's protocol
factory: up to `limit` connections are served by aiohttp's own handler; one more gets a 503 in OpenAI's error
shape with `Retry-After` and is closed, as the WebSocket port answers past `--max-connections`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .errors import unavailable

LINGER_S = 0.25  # after the 503: how long to read and drop what the peer already sent before closing
LINGER_BYTES = 1 << 16


class ConnectionCap:
    """Protocol factory for the HTTP listener: `make()` (aiohttp's handler factory) for up to `limit` open
    connections, a refusal for the rest; `on_refuse()` is called for each refusal (metrics)."""

    def __init__(self, make: Callable[[], asyncio.Protocol], limit: int, on_refuse: Callable[[], None]) -> None:
        self._make, self.limit, self._on_refuse = make, limit, on_refuse
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self._on_refuse()
            return _Refusal(self.limit)
        self.open += 1
        return _Counted(self._make(), self)


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted until the connection is lost."""

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner, self._cap = inner, cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cap.open -= 1
        self._inner.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Answers 503 at once, sends FIN, and drops what the peer sends for a moment before closing (closing with
    unread input would reset the connection before the peer read the answer)."""

    def __init__(self, limit: int) -> None:
        error = unavailable(f"the HTTP API has its maximum of {limit} open connections (--http-max-connections); "
                            "retry later", 1)
        body = error.response().body
        assert isinstance(body, bytes)
        self._answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        self._transport: asyncio.Transport | None = None
        self._dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES and self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool:
        if self._transport is not None:
            self._transport.close()
        return False
