"""Does the peer read? Audio accounting per connection, acknowledged by WebSocket pings.

Kernel socket buffers on loopback hold tens of seconds of audio before a send
blocks, so a writable socket says nothing about a reader. A ping, though, is
answered only once the peer has parsed every frame written before it. So:

    pump ──queued_s──► out queue ──sent_s──► socket ... peer ──pong──► acked_s

`AudioLedger.owed_s = queued_s - acked_s` is the audio this connection holds or
has in flight to a peer that has not yet confirmed it. The request layer waits
for credit (`owed_s < max_buffer_s`), pausing engine streams meanwhile, and ends a
client that confirms nothing for `slow_consumer_timeout` (`stalled_for`). Doors
without pings (HTTP, Wyoming) confirm audio as each write completes.
`Watchdog` (WebSocket) sends the pings and returns a verdict when a deadline
passes: `gone` (no pong to a keepalive ping for `ping_timeout`), or `idle` (no
request in flight and no message for `idle_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

MAX_PROBES = 64  # unanswered pings at once per connection


class AudioLedger:
    """Seconds of one connection's audio: queued by the pumps, written to the socket, acknowledged."""

    def __init__(self, max_buffer_s: float) -> None:
        self.max_buffer_s = max_buffer_s
        self.queued_s = 0.0  # handed to the out queue (running total)
        self.sent_s = 0.0  # written to the socket (running total)
        self.acked_s = 0.0  # covered by an answered ping (running total)
        self.closed = False  # the connection is ending: nobody waits for credit any more
        self._changed = asyncio.Event()
        self._progress_at: float | None = None  # loop time of the last receipt while audio is owed

    @property
    def owed_s(self) -> float:
        """Audio queued or in flight that the peer has not confirmed."""
        return self.queued_s - self.acked_s

    def has_credit(self) -> bool:
        return self.closed or self.owed_s < self.max_buffer_s

    async def wait_credit(self) -> None:
        """Return once the peer has confirmed enough audio (or the connection is ending)."""
        while not self.has_credit():
            self._changed.clear()
            await self._changed.wait()

    def queued(self, seconds: float) -> None:
        if self.owed_s <= 1e-9 and seconds > 0:  # owing starts now
            self._progress_at = asyncio.get_running_loop().time()
        self.queued_s += seconds

    def stalled_for(self, now: float) -> float:
        """Seconds since the peer last confirmed audio while some is owed (0 when nothing is owed)."""
        if self.owed_s <= 1e-9 or self._progress_at is None:
            return 0.0
        return now - self._progress_at

    def sent(self, seconds: float) -> None:
        self.sent_s += seconds

    def acked(self, mark: float) -> None:
        """A pong arrived for a ping written when `sent_s` was `mark`."""
        if mark > self.acked_s:
            self.acked_s = mark
            self._progress_at = asyncio.get_running_loop().time()
            self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()


@dataclass(frozen=True)
class WatchdogConfig:
    """The deadlines a `Watchdog` enforces (seconds); see ServerConfig for the meaning of each."""

    probe_interval: float
    slow_consumer_timeout: float
    ping_interval: float | None
    ping_timeout: float
    idle_timeout: float | None


@dataclass(frozen=True)
class Verdict:
    """Why the watchdog gave up on a connection."""

    kind: str  # "slow_consumer" | "gone" | "idle"
    message: str


@dataclass
class _Probe:
    mark: float  # ledger.sent_s when the ping was written
    at: float  # loop time it was sent
    task: asyncio.Task[None] | None = None
    answered: bool = False


class Watchdog:
    """Sends acknowledgement and keepalive pings for one connection; `run()` returns a Verdict."""

    def __init__(self, ws: ServerConnection, ledger: AudioLedger, config: WatchdogConfig, conn_id: str,
                 idle_since: Callable[[], float | None]) -> None:
        self._ws = ws
        self._ledger = ledger
        self._cfg = config
        self._conn_id = conn_id
        self._idle_since = idle_since  # loop time of the last activity while no request is in flight
        self._probes: list[_Probe] = []
        self._last_mark = 0.0
        self._last_probe_at = asyncio.get_running_loop().time()

    async def run(self) -> Verdict:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                self._probes = [p for p in self._probes if not p.answered]
                verdict = self._check(now)
                if verdict is not None:
                    return verdict
                if self._due(now):
                    self._send_probe(now)
                await asyncio.sleep(self._cfg.probe_interval)  # the watchdog's tick, not a synchronisation
        finally:
            for probe in self._probes:
                if probe.task is not None:
                    probe.task.cancel()

    def _check(self, now: float) -> Verdict | None:
        cfg = self._cfg
        if self._probes:  # (audio owed and unconfirmed: the request layer's slow-consumer watcher decides)
            waited = now - self._probes[0].at
            if self._ledger.owed_s <= 1e-9 and waited > cfg.ping_timeout:
                return Verdict("gone", "keepalive ping timeout")
        idle_since = self._idle_since()
        if cfg.idle_timeout is not None and idle_since is not None and now - idle_since > cfg.idle_timeout:
            return Verdict("idle", f"no request and no message for {cfg.idle_timeout:g} s (idle_timeout)")
        return None

    def _due(self, now: float) -> bool:
        if len(self._probes) >= MAX_PROBES:
            return False
        if self._ledger.sent_s > self._last_mark:  # audio written since the last probe: ask for a receipt
            return True
        interval = self._cfg.ping_interval
        return interval is not None and not self._probes and now - self._last_probe_at >= interval

    def _send_probe(self, now: float) -> None:
        probe = _Probe(self._ledger.sent_s, now)
        self._last_mark, self._last_probe_at = probe.mark, now
        probe.task = asyncio.create_task(self._probe(probe), name=f"{self._conn_id} probe")
        self._probes.append(probe)

    async def _probe(self, probe: _Probe) -> None:
        try:
            pong = await self._ws.ping()
            await pong
        except ConnectionClosed:
            return
        probe.answered = True
        self._ledger.acked(probe.mark)
