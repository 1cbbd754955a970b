"""Live fuzz: >= 10,000 malformed or hostile frames over real sockets while a healthy stream runs beside them."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from protocol import PATH
from streaming.engine import Engine
from tests.server_fixtures import (  # noqa: F401 - engine is a fixture
    PARAMS,
    TEST_LIMITS,
    RawClient,
    Result,
    engine,
    run,
    start_server,
)

N_FRAMES = 10_000
N_WORKERS = 8
BATCH = 25  # frames between two probes
HEALTHY_TEXT = "Hello there. How are you today?"
SEED = 20240611
TYPES = ("speak", "start", "text", "flush", "end", "cancel")
FIELDS = ("type", "id", "text", "voice", "encoding", "params", "seq", "x")
PARAM_KEYS = ("text_temp", "waveform_temp", "fine_temp", "top_k", "top_p", "min_eos_p", "seed",
              "max_semantic_tokens", "greedy", "lookahead", "max_lookahead", "fine_policy", "fine_window", "bogus")
S16_TOLERANCE = 1.0 / 32767.0 + 1e-7


def _value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, sometimes nested past the depth limit."""
    kind = rng.randrange(12 if depth < 6 else 9)
    return [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-2**63, 2**64 - 1),
        lambda: rng.choice([float("nan"), float("inf"), -0.0, 1e308, rng.random()]),
        lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(0, 40))),
        lambda: rng.randbytes(rng.randrange(0, 64)), lambda: rng.choice(TYPES),
        lambda: rng.choice(["v2/en_speaker_6", "../../etc/passwd", "", "x" * 200, "nobody"]),
        lambda: msgpack.ExtType(rng.randrange(0, 128), rng.randbytes(4)),
        lambda: [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))],
        lambda: {str(_value(rng, depth + 1))[:8]: _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))},
        lambda: {rng.choice(PARAM_KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(1, 5))},
    ][kind]()


def _message(rng: random.Random) -> dict[Any, Any]:
    """A map that looks like a client message, with some fields wrong, missing or extra."""
    msg: dict[Any, Any] = {"type": rng.choice(TYPES), "id": rng.choice(["a", "b", "c", f"f{rng.randrange(9)}"])}
    if rng.random() < 0.7:
        msg["text"] = rng.choice(["Hi.", "", " ", "word " * rng.randrange(1, 60), _value(rng)])
    if rng.random() < 0.5:
        msg["params"] = {**PARAMS, "max_semantic_tokens": rng.randrange(1, 4)} if rng.random() < 0.5 \
            else _value(rng)
    for _ in range(rng.randrange(0, 3)):
        msg[rng.choice(FIELDS)] = _value(rng)
    if rng.random() < 0.1:
        msg[rng.choice([1, b"k", 2.5, None])] = 1  # non-str key
    return msg


def hostile_frame(rng: random.Random) -> bytes | str:
    """One hostile frame: garbage, truncated or mutated msgpack, bombs, text frames, oversize frames."""
    roll = rng.random()
    packed = msgpack.packb(_message(rng), use_bin_type=True) if roll > 0.03 else b""
    if roll < 0.01:
        return '{"type": "speak"}'  # text frame: fatal 1003
    if roll < 0.02:
        return b"\x91" * (TEST_LIMITS.max_frame_bytes + rng.randrange(1, 100))  # frame_too_large: fatal 1009
    if roll < 0.03:
        return rng.randbytes(rng.randrange(0, 300))
    if roll < 0.10:
        return packed[: rng.randrange(0, max(1, len(packed)))]  # truncated
    if roll < 0.15:
        return packed + rng.randbytes(rng.randrange(1, 8))  # trailing bytes
    if roll < 0.22:
        data = bytearray(packed)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if roll < 0.25:
        return b"\xdf" + struct.pack(">I", 2**32 - 1)  # map header claiming 4 billion entries
    if roll < 0.27:
        return b"\x91" * 50 + b"\xc0"  # arrays nested 50 deep
    return packed


class _FuzzConnection:
    """One fuzz connection: a reader tallies every reply and wakes the sender when a probe is answered."""

    def __init__(self, ws: Any, outcomes: Counter[str]) -> None:
        self.ws = ws
        self.outcomes = outcomes
        self.answered: set[str] = set()
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                msg = msgpack.unpackb(frame, raw=False)
                if msg["type"] == "error" and str(msg.get("id", "")).startswith("probe-"):
                    self.answered.add(msg["id"])
                    self.changed.set()
                    continue
                self.outcomes[msg["type"] if msg["type"] != "error" else "error:" + msg["code"]] += 1
        except ConnectionClosed as exc:
            self.outcomes[f"closed:{exc.rcvd.code if exc.rcvd else None}"] += 1
        finally:
            self.changed.set()

    async def probe(self, n: int) -> bool:
        """Send a probe (an unknown id) and wait for its answer: True once every frame before it was read."""
        probe_id = f"probe-{n}"
        await self.ws.send(msgpack.packb({"type": "cancel", "id": probe_id}))
        while probe_id not in self.answered:
            if self.reader.done():
                return False
            self.changed.clear()
            await self.changed.wait()
        return True


async def _worker(url: str, rng: random.Random, n_frames: int, outcomes: Counter[str]) -> None:
    """Send hostile frames in batches, each confirmed read by a probe, reconnecting after fatal ones."""
    delivered = probes = 0
    while delivered < n_frames:
        async with connect(url, max_size=None, compression=None) as ws:
            conn = _FuzzConnection(ws, outcomes)
            try:
                while delivered < n_frames:
                    batch = [hostile_frame(rng) for _ in range(min(BATCH, n_frames - delivered))]
                    fatal = next((i for i, f in enumerate(batch) if _is_fatal(f)), None)
                    batch = batch if fatal is None else batch[: fatal + 1]
                    for frame in batch:
                        await ws.send(frame)
                    if fatal is not None:  # the server reads it, answers and closes: then reconnect
                        await conn.reader
                        delivered += len(batch)
                        break
                    probes += 1
                    if not await conn.probe(probes):
                        break
                    delivered += len(batch)
                    if rng.random() < 0.01:  # an abrupt disconnect now and then
                        ws.transport.abort()
                        outcomes["aborted"] += 1
                        break
            except ConnectionClosed:
                pass
            await ws.close()
            await conn.reader
    outcomes["frames"] += delivered


def _is_fatal(frame: bytes | str) -> bool:
    return isinstance(frame, str) or len(frame) > TEST_LIMITS.max_frame_bytes


async def _healthy(url: str) -> Result:
    client = await RawClient.connect(url)
    await client.speak("h", HEALTHY_TEXT, encoding="pcm_f32le")
    result = (await client.until_done("h"))["h"]
    await client.close()
    return result


@pytest.mark.timeout(600)
def test_live_fuzz_leaves_server_and_neighbour_intact(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """10,000 hostile frames on 8 reconnecting connections: no handler failure, the healthy stream's audio unchanged."""
    caplog.set_level(logging.INFO, logger="websockets")
    caplog.set_level(logging.INFO, logger="server")
    srv = start_server(engine, max_messages_per_s=1e6, message_burst=1_000_000)
    try:
        reference = run(_healthy(srv.url))
        outcomes: Counter[str] = Counter()

        async def noisy() -> list[Result]:
            url = f"ws://127.0.0.1:{srv.port}{PATH}"
            fuzz = asyncio.gather(*(_worker(url, random.Random(SEED + i), N_FRAMES // N_WORKERS, outcomes)
                                    for i in range(N_WORKERS)))
            healthy: list[Result] = []
            while not fuzz.done():
                healthy.append(await _healthy(url))
            await fuzz
            return healthy

        healthy = run(noisy(), timeout=540)
        assert srv.server is not None and srv.engine.healthy
        assert run(_healthy(srv.url)).done["reason"] == "end"  # type: ignore[index] # still serving
    finally:
        srv.stop()
    assert outcomes["frames"] >= N_FRAMES and len(healthy) >= 1, outcomes
    assert outcomes["closed:1003"] and outcomes["closed:1009"] and outcomes["error:bad_frame"], outcomes
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("websockets", "server"))
                or "handler failed" in r.getMessage()]
    assert not failures, [r.getMessage() for r in failures[:5]]
    want = reference.samples("pcm_f32le")
    for result in [reference, *healthy]:
        assert result.done is not None and result.done["reason"] == "end"
        result.check_contiguous("pcm_f32le")
        got = result.samples("pcm_f32le")
        assert got.shape == want.shape and np.abs(got - want).max(initial=0.0) <= S16_TOLERANCE
