"""What a client may send, in bytes and frames per second, control frames included.

The message rate limit (session.py) sees only data messages; pings, pongs and
close frames are answered inside the WebSocket layer, so a client flooding
unsolicited pongs cost server CPU that no limit counted. `GuardedConnection`
meters every byte and every frame as it arrives. Over budget, the server simply
stops reading that socket until the budget has refilled: TCP backpressure slows
the sender, nothing is parsed meanwhile, and well-behaved clients never notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection

log = logging.getLogger(__name__)


@dataclass
class Bucket:
    """A token bucket: `rate` tokens per second up to `burst`; may go negative (a debt to wait out)."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def spend(self, amount: float, now: float) -> float:
        """Take `amount`; returns the seconds to wait before the balance is back to zero (0 if none)."""
        if self.stamp is None:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass(frozen=True)
class ReadBudget:
    bytes_per_s: float
    byte_burst: float
    frames_per_s: float
    frame_burst: float
    on_throttle: Callable[[str], None] | None = None  # called with "bytes" or "frames" when reading pauses


class GuardedConnection(ServerConnection):
    """A server connection that stops reading while its sender is over its byte or frame budget."""

    budget: ReadBudget  # set on the subclass `guarded_connection` makes

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._head_tail: bytes | None = b""  # during the opening handshake: the last bytes of the request head
        b = self.budget
        self._bytes = Bucket(b.bytes_per_s, b.byte_burst)
        self._frames = Bucket(b.frames_per_s, b.frame_burst)
        self._paused_until = 0.0
        self.throttled = 0  # times reading was paused

    def data_received(self, data: bytes) -> None:
        self._throttle(self._bytes.spend(len(data), self.loop.time()), "bytes")
        if self._head_tail is not None:
            data = self._one_request(data)
        super().data_received(data)

    def _one_request(self, data: bytes) -> bytes:
        """Until the opening handshake's request head ends, pass it on; drop whatever follows it.

        A client may send nothing after its upgrade request before the answer (RFC 6455, 4.1), and
        this port answers one plain HTTP request per connection. Bytes pipelined after the head were
        parsed as WebSocket frames while the answer was pending, and websockets then failed its own
        assertion and logged a traceback for each such connection (a flood of pipelined GETs made
        hundreds)."""
        assert self._head_tail is not None
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            return data
        self._head_tail = None
        return data[: end + 4 - (len(seen) - len(data))]

    def process_event(self, event) -> None:  # type: ignore[no-untyped-def]
        if self.request is not None:  # a frame (data or control), after the handshake
            self._throttle(self._frames.spend(1, self.loop.time()), "frames")
        super().process_event(event)

    def _throttle(self, wait: float, what: str) -> None:
        if wait <= 0 or self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if now + wait <= self._paused_until:
            return
        if self._paused_until <= now:
            self.transport.pause_reading()
            self.throttled += 1
            if self.budget.on_throttle is not None:
                self.budget.on_throttle(what)
        self._paused_until = now + wait
        self.loop.call_at(self._paused_until, self._resume)

    def _resume(self) -> None:
        if self.loop.time() + 1e-3 < self._paused_until:
            return  # a later pause extended the deadline; its own timer resumes
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


def guarded_connection(budget: ReadBudget) -> type[GuardedConnection]:
    """A GuardedConnection class bound to `budget` (websockets builds connections from a class)."""
    return type("BoundGuardedConnection", (GuardedConnection,), {"budget": budget})
