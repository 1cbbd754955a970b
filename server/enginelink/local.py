"""`LocalEngine`: the `EngineLink` over an engine thread in this process (tests, embedding, notebooks).

Text is segmented and tokenised by the handle in the calling thread, so every call
that takes text runs in a worker thread: neither the event loop nor the engine
thread does work sized by a client's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from streaming.events import EngineSnapshot, Event

from .base import EngineInfo, EngineRequest

if TYPE_CHECKING:  # the engine module imports torch; this module must not at import time
    from streaming.engine import Engine
    from streaming.stream import StreamHandle

HEALTH_POLL_S = 0.2  # how often wait_failed() looks at the engine thread (it has no death callback)


class LocalStream:
    """An engine `StreamHandle` behind the `EngineStream` interface."""

    def __init__(self, handle: StreamHandle) -> None:
        self.handle = handle
        self.id = handle.id

    async def feed(self, text: str) -> None:
        await asyncio.to_thread(self.handle.feed, text)

    async def flush(self) -> None:
        await asyncio.to_thread(self.handle.flush)

    async def end(self) -> None:
        await asyncio.to_thread(self.handle.end)

    def cancel(self) -> None:
        self.handle.cancel()

    def pause(self) -> None:
        self.handle.pause()

    def resume(self) -> None:
        self.handle.resume()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.handle.__aiter__()


class LocalEngine:
    """An already started `Engine` (its thread in this process) as an `EngineLink`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        cfg = engine.config
        self.info = EngineInfo(engine.model_name, cfg.max_streams, cfg.max_queue)

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    def snapshot(self) -> EngineSnapshot:
        return self.engine.snapshot()

    async def submit(self, request: EngineRequest) -> LocalStream:
        from streaming.stream import SpeechRequest

        speech = SpeechRequest(text=request.text, voice=request.voice, sampling=request.sampling,
                               policy=request.policy, request_id=request.request_id, owner=request.owner)
        loop = asyncio.get_running_loop()
        handle = await asyncio.to_thread(self.engine.submit, speech, loop=loop)
        return LocalStream(handle)

    async def wait_failed(self) -> None:
        while self.engine.healthy:
            await asyncio.sleep(HEALTH_POLL_S)  # a liveness poll: the engine thread has no death callback

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.stop)
