"""Several servers, or a balancer in front of them: connect to the first URL that accepts, and retry
elsewhere on the answers that mean "not here, not now", never replaying audio already delivered.

    client = await FailoverClient.connect(["ws://a:8765/v1/stream", "ws://b:8765/v1/stream"])
    async with client:
        async for event in client.speak("Hello there."):   # the same events as BarkStreamClient
            ...

What is retried, on the next URL (round-robin from the one that failed), after a backoff:
- opening a connection that got HTTP 503 (the replica drains, or is full with --refuse-when-full; also a
  balancer with no replica left), 502 or 504 (a proxy's), a refused, reset or timed-out connection, or a
  close before `ready`. Every URL is tried once at once; after a whole round fails the client waits
  `backoff_s` (doubling per round, jittered) or the largest `Retry-After` seen, at most `max_backoff_s`.
  A round in which every URL refused the connection ends the attempts: nothing listens anywhere.
- a request that has delivered no audio yet (no AudioChunk, no Segment) when its connection closes with
  1001 (going away), 1012 (service restart: a drain's deadline), 1013 (try again later), 1011 (the
  server failed) or without a close frame, or when the server answers it `shutting_down`. It is sent again,
  whole, on a new connection; stream_text replays the text pieces sent so far, then goes on with the rest.

What is never retried: a request that has delivered audio. It raises `RetryUnsafe` (a `ConnectionLost`)
saying how much audio arrived, so the caller decides: restarting would play the beginning twice. Nor are
401/403/404, protocol mismatches, `overloaded` and other request errors: they would fail again anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import InvalidStatus

from .api import (
    DEFAULT_URL,
    AudioChunk,
    BarkStreamClient,
    ConnectionFailed,
    ConnectionLost,
    Event,
    Flushed,
    Segment,
    ServerError,
    ServerInfo,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})  # handshake answers that mean "try another replica"
RETRY_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})  # 1006: closed without a close frame
RETRY_ERROR_CODES = frozenset({"shutting_down"})  # request errors a draining server sends


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. The defaults ride out a replica's restart behind a balancer (~30 s)."""

    connect_attempts: int = 12  # connection attempts per (re)connect, every URL try counted
    request_retries: int = 3  # times one request is sent again on a new connection
    backoff_s: float = 0.25  # first wait after every URL failed once; doubles each round
    max_backoff_s: float = 5.0  # longest single wait, Retry-After included

    def __post_init__(self) -> None:
        if self.connect_attempts < 1 or self.request_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"RetryPolicy: attempts >= 1 and non-negative retries and waits, got {self}")


class RetryUnsafe(ConnectionLost):
    """The connection of a request that had already delivered audio was lost: not retried, because the
    audio delivered would be played again. `samples` tells how much arrived (`events`: every event)."""

    def __init__(self, message: str, *, code: int | None, samples: int, events: int) -> None:
        super().__init__(message, code=code)
        self.samples = samples
        self.events = events


def retry_verdict(exc: ConnectionFailed) -> tuple[bool, float | None]:
    """(worth trying another URL, the server's Retry-After in seconds or None) for a failed connect."""
    cause = exc.__cause__
    if isinstance(cause, InvalidStatus):
        status = cause.response.status_code
        header = cause.response.headers.get("Retry-After", "")
        after = float(header) if header.strip().isdigit() else None
        return status in RETRY_STATUSES, after
    if isinstance(cause, (OSError, TimeoutError, asyncio.TimeoutError)):  # refused, reset, unreachable, slow
        return True, None
    return "closed the connection before `ready`" in str(exc), None  # e.g. a replica stopping mid-handshake


class FailoverClient:
    """One connection at a time, to the first of `urls` that accepts; replaced when it fails (see module)."""

    def __init__(self, urls: Sequence[str], *, open_timeout: float = 10.0,
                 additional_headers: Mapping[str, str] | None = None, ssl: Any = None,
                 policy: RetryPolicy | None = None) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("urls: give at least one server URL")
        self.urls = tuple(urls)
        self.policy = policy or RetryPolicy()
        self._options: dict[str, Any] = {"open_timeout": open_timeout, "additional_headers": additional_headers,
                                         "ssl": ssl}
        self._client: BarkStreamClient | None = None
        self._next = 0  # index (mod len(urls)) of the URL tried next
        self._lock = asyncio.Lock()
        self._closing = False
        self.reconnects = 0  # connections replaced after a failure
        self.retried_requests = 0  # requests sent again after their connection failed

    @classmethod
    async def connect(cls, urls: Sequence[str] | str = DEFAULT_URL, **options: Any) -> FailoverClient:
        """Connect to the first URL that says `ready` (ConnectionFailed when none does, naming each)."""
        client = cls(urls if not isinstance(urls, str) else [urls], **options)
        await client._current()
        return client

    @property
    def info(self) -> ServerInfo:
        assert self._client is not None, "FailoverClient: not connected"
        return self._client.info

    @property
    def url(self) -> str:
        """The URL of the connection in use."""
        assert self._client is not None, "FailoverClient: not connected"
        return self._client.url

    @property
    def in_flight(self) -> tuple[str, ...]:
        return self._client.in_flight if self._client is not None else ()

    async def speak(self, text: str, **options: Any) -> AsyncIterator[Event]:
        """BarkStreamClient.speak, retried on another connection while it has delivered no audio."""
        async for event in self._retrying(lambda client: client.speak(text, **options)):
            yield event

    async def stream_text(self, pieces: AsyncIterable[str] | Iterable[str], **options: Any) -> AsyncIterator[Event]:
        """BarkStreamClient.stream_text, retried like speak(): a retry sends the pieces read so far again."""
        source = _Replayable(pieces)
        try:
            async for event in self._retrying(lambda client: client.stream_text(source.replay(), **options)):
                yield event
        finally:
            await source.close()

    async def keepalive(self) -> None:
        await (await self._current()).keepalive()

    async def cancel(self, id: str) -> bool:  # noqa: A002 - the wire field is called id
        return await self._client.cancel(id) if self._client is not None else False

    async def close(self) -> None:
        self._closing = True
        if self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> FailoverClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- internals -------------------------------------------------------------------------------------

    async def _retrying(self, start: Callable[[BarkStreamClient], AsyncIterator[Event]]) -> AsyncIterator[Event]:
        retries = 0
        flushes_seen = 0  # Flushed events already yielded: a retry replays the same flushes, not shown twice
        while True:
            client = await self._current()
            delivered = samples = events = flushes = 0
            try:
                async with contextlib.aclosing(start(client)) as attempt:
                    async for event in attempt:
                        if isinstance(event, Flushed):
                            flushes += 1
                            if flushes <= flushes_seen:
                                continue
                            flushes_seen = flushes
                        elif isinstance(event, (AudioChunk, Segment)):
                            delivered += 1
                            if isinstance(event, AudioChunk):
                                samples = event.sample + event.samples.size
                        events += 1
                        yield event
                return
            except ConnectionLost as exc:
                retry, code, why = exc.code in RETRY_CLOSE_CODES or exc.code is None, exc.code, str(exc)
                error: Exception = exc
            except ServerError as exc:
                retry, code, why = exc.code in RETRY_ERROR_CODES, None, str(exc)
                error = exc
            if not retry or self._closing:
                raise error
            if delivered:
                raise RetryUnsafe(f"{why}; not retried: {samples} samples of this request were already delivered "
                                  "and a new attempt would start from the beginning", code=code, samples=samples,
                                  events=events) from error
            if retries >= self.policy.request_retries:
                raise error
            retries += 1
            self.retried_requests += 1
            log.info("retrying a request on another connection (%d/%d): %s", retries, self.policy.request_retries, why)
            await self._replace(client)

    async def _current(self) -> BarkStreamClient:
        async with self._lock:
            if self._client is None or self._client.closed:
                await self._open()
            assert self._client is not None
            return self._client

    async def _replace(self, dead: BarkStreamClient) -> None:
        """Drop `dead` and connect again, starting from the URL after its own (other requests of the same
        connection call this too: the first replaces it, the rest use the replacement)."""
        async with self._lock:
            if self._client is not dead:
                return
            self._client = None
            self.reconnects += 1
            with contextlib.suppress(Exception):
                await dead.close()
            await self._open()  # _next already points past the URL `dead` was connected to

    async def _open(self) -> None:
        policy, n = self.policy, len(self.urls)
        failures: list[str] = []
        round_wait: float | None = None  # the largest Retry-After of this round
        rounds = tried = refused = 0  # refused: connections refused in this round (nothing listens there)
        for attempt in range(policy.connect_attempts):
            if self._closing:
                raise ConnectionFailed("closed by the client")
            url = self.urls[self._next % n]
            self._next += 1
            try:
                self._client = await BarkStreamClient.connect(url, **self._options)
                if failures:
                    log.info("connected to %s after %d failed attempt(s)", url, len(failures))
                return
            except ConnectionFailed as exc:
                retry, after = retry_verdict(exc)
                failures.append(str(exc))
                if not retry:
                    raise
                refused += isinstance(exc.__cause__, ConnectionRefusedError)
                log.info("%s; trying %s", exc, "the next URL" if n > 1 else "again")
                if after is not None:
                    round_wait = max(round_wait or 0.0, after)
            tried += 1
            if tried == n and refused == n:  # nothing listens at any URL: waiting would not help
                break
            if tried == n and attempt + 1 < policy.connect_attempts:  # every URL failed once: back off
                backoff = policy.backoff_s * 2 ** rounds * random.uniform(0.5, 1.0)
                await asyncio.sleep(min(policy.max_backoff_s, max(backoff, round_wait or 0.0)))
                rounds, tried, refused, round_wait = rounds + 1, 0, 0, None
        if len(failures) == 1:  # one URL, refused: the plain reason says it best
            raise ConnectionFailed(failures[0])
        shown = "; ".join(dict.fromkeys(failures[-n:]))
        raise ConnectionFailed(f"no server accepted the connection after {len(failures)} attempt(s) over "
                               f"{n} URL(s): {shown}")


class _Replayable:
    """Reads `pieces` once (in its own task) and replays what it read to each attempt that asks."""

    def __init__(self, pieces: AsyncIterable[str] | Iterable[str]) -> None:
        self._pieces = pieces
        self._items: list[str] = []
        self._ended = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        try:
            if isinstance(self._pieces, AsyncIterable):
                async for piece in self._pieces:
                    self._add(piece)
            else:
                for piece in self._pieces:
                    self._add(piece)
        except Exception as exc:  # noqa: BLE001 - handed to the attempt reading, which raises it
            self._error = exc
        finally:
            self._ended = True
            self._wake()

    def _add(self, piece: str) -> None:
        self._items.append(piece)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def replay(self) -> AsyncIterator[str]:
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name="bark-stream text source")
        index = 0
        while True:
            changed = self._changed
            if index < len(self._items):
                index += 1
                yield self._items[index - 1]
            elif self._ended:
                if self._error is not None:
                    raise self._error
                return
            else:
                await changed.wait()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
