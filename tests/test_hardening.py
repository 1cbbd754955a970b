"""Fair sharing and hardening: each finding from probing the server as a careless or hostile client,
each checked beside a healthy stream on another connection whose audio is unaffected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from client.api import BarkStreamClient, Done, ServerError
from server_fixtures import PARAMS, make_engine, run, start_server
from streaming.errors import ConfigError, ErrorCode


def healthy(url: str):
    """A coroutine: one normal request on its own connection; returns its Done."""
    async def go() -> Done:
        async with await BarkStreamClient.connect(url) as client:
            return [e async for e in client.speak("A healthy neighbour.", params=PARAMS) if isinstance(e, Done)][0]
    return go()


def test_engine_bad_field_reaches_client_as_bad_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request the engine refuses for its own input ends with the typed code bad_field (not internal);
    the neighbour ends normally."""
    from streaming.stages.coarse import CoarseStage

    real = CoarseStage._accept_row

    def picky(self: Any, seg: Any, token: int) -> Any:
        if seg.generator.seed == 4242:
            raise ConfigError("seed: 4242 is refused by this test", field="seed")
        return real(self, seg, token)

    engine = make_engine(max_streams=2, max_queue=2)
    srv = start_server(engine)
    monkeypatch.setattr(CoarseStage, "_accept_row", picky)
    try:
        async def go() -> tuple[ServerError, Done]:
            async with await BarkStreamClient.connect(srv.url) as client:
                with pytest.raises(ServerError) as info:
                    async for _ in client.speak("Refuse me.", params={**PARAMS, "seed": 4242}):
                        pass
                return info.value, await healthy(srv.url)

        err, done = run(go())
        assert err.code == ErrorCode.BAD_FIELD and "seed: 4242" in str(err)
        assert done.reason == "end"
    finally:
        srv.stop()
        engine.stop()


def test_refused_request_sends_no_stray_cancel() -> None:
    """A request refused with overloaded is over: the client library sends no cancel for it (the server would
    answer unknown_id), and the connection goes on serving."""
    engine = make_engine(max_streams=1, max_queue=0)
    srv = start_server(engine, max_streams=1, max_queue=0)
    try:
        async def go() -> tuple[str, str]:
            async with await BarkStreamClient.connect(srv.url) as holder, \
                    await BarkStreamClient.connect(srv.url) as client:
                hold = holder.stream_text(_never_ending(), params=PARAMS)
                first = await hold.__anext__()  # the holder's first audio: it owns the only slot
                with pytest.raises(ServerError) as info:
                    async for _ in client.speak("No room for me.", params=PARAMS):
                        pass
                await hold.aclose()  # cancels the holder
                await asyncio.to_thread(srv.wait_metric, "bark_active_streams", lambda v: v == 0)
                after = [e async for e in client.speak("Room now.", params=PARAMS) if isinstance(e, Done)][0]
                return info.value.code, after.reason, type(first).__name__

        code, reason, _ = run(go())
        assert (code, reason) == ("overloaded", "end")
        assert srv.metric("bark_errors_total", 'code="unknown_id"') == 0
    finally:
        srv.stop()
        engine.stop()


async def _never_ending():
    yield "Hold this slot with a sentence that comes first.\n"  # a line: the client flushes it
    await asyncio.sleep(3600)
    yield "never"
