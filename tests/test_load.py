"""Load: 64 connections x 2 requests at once; every request intact, then streams, fds and tasks back to baseline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.server_fixtures import PARAMS, RawClient, Result, ServerThread, make_engine, run, start_server

N_CONNECTIONS = 64
PER_CONNECTION = 2
LOAD_PARAMS = {**PARAMS, "max_semantic_tokens": 10}
TEXTS = ("Hello there.", "How are you today?", "The quick brown fox jumps.", "One more, please.")
S16_TOLERANCE = 1.0 / 32767.0 + 1e-7


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def server_tasks(srv: ServerThread) -> int:
    """asyncio tasks alive on the server's loop."""
    async def count() -> int:
        return len(asyncio.all_tasks())
    assert srv.loop is not None
    return asyncio.run_coroutine_threadsafe(count(), srv.loop).result(10)


def settle(read: Callable[[], int], baseline: int, what: str, timeout: float = 10.0) -> int:
    """Poll `read` until it is back to `baseline` (bounded); return the last value."""
    deadline = time.monotonic() + timeout
    value = read()
    while value > baseline and time.monotonic() < deadline:
        time.sleep(0.02)  # polling interval, bounded by the deadline
        value = read()
    assert value <= baseline, f"{what}: {value} after the load, baseline {baseline}"
    return value


async def one_connection(url: str, n: int) -> dict[str, Result]:
    client = await RawClient.connect(url)
    ids = [f"c{n}r{k}" for k in range(PER_CONNECTION)]
    for k, req_id in enumerate(ids):
        await client.speak(req_id, TEXTS[(n + k) % len(TEXTS)], params=LOAD_PARAMS)
    results = await client.until_done(*ids)
    await client.close()
    return results


@pytest.mark.timeout(600)
def test_64_connections_two_requests_each() -> None:
    """64 connections with 2 requests each all end with done, contiguous and exact; resources return to baseline."""
    engine = make_engine(max_streams=8, max_queue=N_CONNECTIONS * PER_CONNECTION)
    srv = start_server(engine, max_streams=8, max_queue=N_CONNECTIONS * PER_CONNECTION,
                       max_connections=N_CONNECTIONS)
    try:
        async def references() -> dict[str, np.ndarray]:
            client, want = await RawClient.connect(srv.url), {}
            for i, text in enumerate(TEXTS):  # one at a time: each alone on the engine
                await client.speak(f"ref{i}", text, params=LOAD_PARAMS)
                want[text] = (await client.until_done(f"ref{i}"))[f"ref{i}"].samples()
            await client.close()
            return want

        want = run(references())
        settle(lambda: engine.snapshot().active, 0, "active streams")
        fds, tasks = open_fds(), server_tasks(srv)

        async def load() -> list[dict[str, Result]]:
            return await asyncio.gather(*(one_connection(srv.url, n) for n in range(N_CONNECTIONS)))

        all_results = run(load(), timeout=540)
        for n, results in enumerate(all_results):
            for k, (req_id, result) in enumerate(results.items()):
                assert result.done is not None and result.done["reason"] == "end", (req_id, result.done)
                assert result.errors == [] and result.order[-1] == "done"
                result.check_contiguous()
                got, ref = result.samples(), want[TEXTS[(n + k) % len(TEXTS)]]
                assert got.shape == ref.shape and np.abs(got - ref).max(initial=0.0) <= S16_TOLERANCE, req_id
        settle(lambda: engine.snapshot().active + engine.snapshot().queued, 0, "engine streams")
        settle(lambda: int(srv.metric("bark_connections")), 0, "connections")
        settle(open_fds, fds, "open file descriptors")
        settle(lambda: server_tasks(srv), tasks, "server asyncio tasks")
        assert srv.metric("bark_requests_finished_total", 'reason="end"') == N_CONNECTIONS * PER_CONNECTION + 4
    finally:
        srv.stop()
        engine.stop()
