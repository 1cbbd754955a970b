"""The one interface the request layer talks to the engine through, wherever the engine runs.

    link = LocalEngine(engine)              # in this process (tests, embedding, notebooks)
    link = await EngineProcess.start(...)   # in its own process (the server's default)

    stream = await link.submit(EngineRequest(text="Hello.", ...))   # EngineOverloaded, TextError
    await stream.feed("more text"); await stream.end()               # piecewise requests (TextError)
    stream.pause(); stream.resume(); stream.cancel()                 # cheap, never block
    async for event in stream: ...                                   # AudioChunk | SegmentSpan | StreamDone

Everything here is torch-free: a front-end process that only holds an `EngineLink`
never imports torch. Events are `streaming.events` values; errors are the
`streaming.errors` classes, so both kinds of link raise and yield the same things.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from streaming.events import EngineSnapshot, Event
from streaming.params import SamplingParams, StreamPolicy
from streaming.voices import Voice


@dataclass(frozen=True)
class EngineRequest:
    """What to say and how: the engine's `SpeechRequest` without anything that needs torch."""

    text: str | None  # the whole text; None: it arrives through feed()/end()
    voice: Voice | None = None  # a resolved voice, None = no voice prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    policy: StreamPolicy = field(default_factory=StreamPolicy)
    request_id: str = ""  # for logs: "<connection>/<id>"
    owner: str = ""  # who asked (a connection): the engine shares its slots fairly between owners


@dataclass(frozen=True)
class EngineInfo:
    """What the front end needs to know about the engine it serves."""

    model_name: str
    max_streams: int
    max_queue: int


class EngineStream(Protocol):
    """The front end's end of one engine stream."""

    id: int

    async def feed(self, text: str) -> None: ...  # TextError when the text cannot be used

    async def flush(self) -> None: ...

    async def end(self) -> None: ...

    def cancel(self) -> None: ...  # idempotent; the stream then ends with reason "cancelled"

    def pause(self) -> None: ...  # spend no compute on it until resume() (backpressure)

    def resume(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...  # StreamDone is always the last event


class EngineLink(Protocol):
    """An engine, in this process or another; every method is called on the event loop."""

    info: EngineInfo

    @property
    def healthy(self) -> bool: ...  # False once the engine (thread or process) has died

    def snapshot(self) -> EngineSnapshot: ...  # occupancy now (the engine process's last report)

    async def submit(self, request: EngineRequest) -> EngineStream: ...  # EngineOverloaded, TextError

    async def wait_failed(self) -> None: ...  # returns once the engine has died (never, while it lives)

    async def close(self) -> None: ...  # stop the engine (in-process: its thread; else: its process)
