"""Open connections to the HTTP port, capped: all of them, and per client address.

aiohttp bounds what one connection may send (head sizes, body size) and how long it may sit without a request
(its keep-alive timer, which also runs before the first request), but not how many connections are open at
once: a client opening thousands of idle or slowly-sending connections would exhaust the process's file
descriptors, which the WebSocket and Wyoming listeners share, and lock every other client out of the HTTP port.
`ConnectionCap` is the listener's protocol factory. Up to `limit` connections are served by aiohttp's own
handler; one more gets a 503 in OpenAI's error shape with `Retry-After` and is closed, as the WebSocket port
answers past `--max-connections`. With `per_address` (`--max-connections-per-ip`), one client address may hold
at most that many: one more gets 429. A trusted proxy's connections (`--trusted-proxy`) are not counted per
address: they carry many clients, told apart only by X-Forwarded-For, per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..auth import is_trusted_proxy
from ..requests.admission import Admission
from .errors import ApiError, rate_limited, unavailable

LINGER_S = 0.25  # after a refusal: how long to read and drop what the peer already sent before closing
LINGER_BYTES = 1 << 16


class ConnectionCap:
    """Protocol factory for the HTTP listener: `make()` (aiohttp's handler factory) for the connections within
    the caps, a refusal for the rest; `on_refuse(reason)` counts each refusal (metrics)."""

    def __init__(self, make: Callable[[], asyncio.Protocol], limit: int, on_refuse: Callable[[str], None],
                 admission: Admission, trusted: tuple[str, ...] = ()) -> None:
        self._make, self.limit, self._on_refuse = make, limit, on_refuse
        self._admission, self._trusted = admission, trusted  # connections per address, every door counted
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        return _Counted(self)

    def admit(self, address: str) -> tuple[asyncio.Protocol | None, str | None]:
        """(aiohttp's handler, the address counted against) for a connection within the caps, else
        (a refusal, None)."""
        if self.open >= self.limit:
            self._on_refuse("http_connections")
            return _Refusal(unavailable(f"the HTTP API has its maximum of {self.limit} open connections "
                                        "(--http-max-connections); retry later", 1)), None
        counted = None
        if not is_trusted_proxy(address, self._trusted):
            if not self._admission.connect(address):
                self._on_refuse("per_ip")
                return _Refusal(rate_limited(f"your address has {self._admission.connections[address]} open "
                                             "connections (--max-connections-per-ip, every protocol counted); "
                                             "reuse one or close one", 1)), None
            counted = address
        self.open += 1
        return self._make(), counted

    def release(self, counted: str | None) -> None:
        self.open -= 1
        if counted is not None:
            self._admission.disconnect(counted)


class _Counted(asyncio.Protocol):
    """One connection: aiohttp's handler when the caps admit it (counted until the connection is lost), else a
    refusal. The decision waits for connection_made, which knows the peer's address."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap
        self._inner: asyncio.Protocol | None = None
        self._admitted = False
        self._counted: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        inner, self._counted = self._cap.admit(address)
        self._admitted = not isinstance(inner, _Refusal)
        self._inner = inner
        inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        assert self._inner is not None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert self._inner is not None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._cap.release(self._counted)
        if self._inner is not None:
            self._inner.connection_lost(exc)


class _Refusal(asyncio.Protocol):
    """Answers with `error` at once, sends FIN, and drops what the peer sends for a moment before closing
    (closing with unread input would reset the connection before the peer read the answer)."""

    def __init__(self, error: ApiError) -> None:
        response = error.response()
        body = response.body
        assert isinstance(body, bytes)
        reason = {429: "Too Many Requests", 503: "Service Unavailable"}.get(error.status, "Error")
        retry = response.headers.get("Retry-After")
        self._answer = (f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
                        + (f"Retry-After: {retry}\r\n" if retry else "")
                        + f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
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
