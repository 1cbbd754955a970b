"""A WebSocket neighbour's first audio, unloaded and under a flood of cheap HTTP requests, per engine mode.

    python bench/flood.py [--modes process thread] [--rate 1000] [--runs 5] [--seconds-per-run 1]

For each engine mode, starts `python -m server` (random-tiny, --http-port) on loopback,
measures a WebSocket neighbour's first audio (send `speak` -> first `audio` frame, median of
--runs requests, one at a time), then again while a separate process pipelines about --rate
requests per second of 404 paths, `/metrics` and `/healthz` over keep-alive connections to
both ports. Prints the machine line, each mode's unloaded and loaded medians, the flood rate
achieved and its answers by status, and closes with `loaded/unloaded = X x` per mode (target
<= 3). The flood's own answers are mostly 429 once the per-address limiter is empty: the point
is what the flood costs the engine, not what it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

PARAMS = {"greedy": True, "max_semantic_tokens": 24}
PATHS = ("/nope", "/metrics", "/healthz", "/v1/nothing")


def machine() -> str:
    """The machine line every bench prints (without importing torch here: the flood must stay light)."""
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'bench'); import common; "
                          "print(common.machine())"], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m server` in one engine mode, on free loopback ports; waits for its listening line."""

    def __init__(self, mode: str) -> None:
        self.port, self.http_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "server", "--model", "random-tiny", "--codec", "random", "--device", "cpu",
               "--tokenizer", "tests/data/tokenizer", "--port", str(self.port), "--http-port", str(self.http_port),
               "--engine", mode, "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
                time.sleep(0.2)
        raise RuntimeError("server did not start within 300 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def first_audio(port: int, n: int) -> float:
    """Seconds from `speak` to its first audio frame."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None) as ws:
        await ws.recv()  # ready
        t0 = time.perf_counter()
        await ws.send(msgpack.packb({"type": "speak", "id": f"n{n}", "text": "Hello there, neighbour.",
                                     "params": PARAMS}))
        first = None
        while True:
            msg = msgpack.unpackb(await ws.recv())
            if msg["type"] == "audio" and first is None:
                first = time.perf_counter() - t0
            if msg["type"] == "done":
                assert first is not None, msg
                return first


def neighbour(port: int, runs: int) -> list[float]:
    return [asyncio.run(first_audio(port, i)) for i in range(runs)]


# --- the flood, in its own process -------------------------------------------------------------------------------

async def _pipeline(port: int, rate: float, stop_at: float, counts: Counter[str]) -> None:
    """One keep-alive connection sending batches of pipelined GETs at `rate` per second."""
    batch = 10
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["connect_error"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                reqs = b"".join(f"GET {PATHS[i % len(PATHS)]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                for i in range(batch))
                writer.write(reqs)
                await writer.drain()
                for _ in range(batch):
                    status = await _read_response(reader)
                    if status is None:
                        raise ConnectionError
                    counts[status] += 1
                await asyncio.sleep(max(0.0, batch / rate - (time.monotonic() - t0)))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            counts["closed"] += 1
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> str | None:
    head = await reader.readuntil(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    status = first.split(" ")[1] if " " in first else "?"
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    elif re.search(rb"(?i)transfer-encoding:\s*chunked", head):
        return None
    if re.search(rb"(?i)connection:\s*close", head):
        return None if not status else status
    return status


def flood(ports: list[int], rate: float, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        stop_at = time.monotonic() + seconds
        per = rate / (4 * len(ports))
        await asyncio.gather(*(_pipeline(p, per, stop_at, counts) for p in ports for _ in range(4)))
        return counts

    out.put(dict(asyncio.run(main())))


def measure(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    server = Server(mode)
    try:
        neighbour(server.port, 2)  # warm: first connections, the voice-less prompt path
        unloaded = neighbour(server.port, args.runs)
        queue: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
        seconds = 5.0 + args.runs * 3.0
        proc = mp.get_context("spawn").Process(target=flood, args=([server.http_port, server.port], args.rate,
                                                                     seconds, queue))
        proc.start()
        time.sleep(2.0)  # let the flood reach its rate
        t0 = time.monotonic()
        loaded = neighbour(server.port, args.runs)
        during = time.monotonic() - t0
        counts = queue.get(timeout=seconds + 60)
        proc.join()
        total = sum(v for k, v in counts.items() if k.isdigit())
        print(f"{mode}: first audio unloaded median {statistics.median(unloaded) * 1000:.0f} ms "
              f"(runs {', '.join(f'{x * 1000:.0f}' for x in unloaded)}), loaded median "
              f"{statistics.median(loaded) * 1000:.0f} ms (runs {', '.join(f'{x * 1000:.0f}' for x in loaded)}; "
              f"{during:.1f} s under flood)")
        print(f"{mode}: flood {total / seconds:.0f} answers/s over {seconds:.0f} s, by status "
              f"{dict(sorted(counts.items()))}")
        return statistics.median(unloaded), statistics.median(loaded)
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=("process", "thread"), default=["process", "thread"])
    p.add_argument("--rate", type=float, default=1000.0, help="flood requests per second (default 1000)")
    p.add_argument("--runs", type=int, default=5, help="neighbour requests per measurement (default 5)")
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"flood: ~{args.rate:g} pipelined GETs/s of {', '.join(PATHS)} over keep-alive connections to both ports "
          f"from one process; neighbour: {args.runs} sequential speak requests ({PARAMS})")
    results = {mode: measure(mode, args) for mode in args.modes}
    print("; ".join(f"{mode}: loaded/unloaded = {loaded / unloaded:.2f} x" for mode, (unloaded, loaded)
                    in results.items()) + "  (target <= 3)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
