"""A WebSocket neighbour's first audio, unloaded and under a flood of cheap HTTP requests, per engine mode.

    python bench/flood.py [--modes process thread] [--rate 1000] [--runs 5] [--seconds-per-run 1]

For each engine mode, starts `python -m server` (random-tiny, --http-port) on loopback,
measures a WebSocket neighbour's first audio (send `speak` -> first `audio` frame, median of
--runs requests, one at a time), then again while a separate process pipelines about --rate
requests per second of 404 paths, `/metrics` and `/healthz` from another loopback address
(127.0.0.2): 80 % pipelined over keep-alive connections to the HTTP API's port, 20 % one request
per connection to the WebSocket port. Prints the machine line, each mode's unloaded and loaded medians, the flood rate
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
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

PARAMS = {"greedy": True, "max_semantic_tokens": 24}
PATHS = ("/nope", "/metrics", "/healthz", "/v1/nothing")
FLOOD_ADDRESS = "127.0.0.2"  # the flood's own client address (loopback range): the neighbour is 127.0.0.1


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

    def __init__(self, mode: str, extra: list[str] | None = None) -> None:
        self.port, self.http_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "server", "--model", "random-tiny", "--codec", "random", "--device", "cpu",
               "--tokenizer", "tests/data/tokenizer", "--port", str(self.port), "--http-port", str(self.http_port),
               "--engine", mode, "--log-level", "warning", *(extra or [])]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="flood-server-", suffix=".log")  # a pipe nobody reads
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, text=True)  # would block
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.tail()}")
                time.sleep(0.2)
        raise RuntimeError("server did not start within 300 s")

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]

    def lines(self, level: str) -> int:
        self.log.seek(0)
        return sum(f" {level} " in line for line in self.log)

    def stop(self) -> None:
        self.log.seek(0)
        kept = Path(tempfile.gettempdir()) / f"flood-server-{self.port}.log"
        kept.write_text(self.log.read())
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

async def _pipeline(port: int, rate: float, stop_at: float, counts: Counter[str], batch: int = 10) -> None:
    """One client sending batches of `batch` pipelined GETs at `rate` requests per second in all, over a
    keep-alive connection (a new one whenever the server closes it: the pace counts across reconnects)."""
    sent = 0
    start = time.monotonic()
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_ADDRESS, 0))
        except OSError:
            counts["connect_error"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < stop_at:
                await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))  # the pace
                reqs = b"".join(f"GET {PATHS[(sent + i) % len(PATHS)]} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                                for i in range(batch))
                writer.write(reqs)
                sent += batch
                await writer.drain()
                for _ in range(batch):
                    status = await _read_response(reader)
                    if status is None:
                        raise ConnectionError
                    counts[status] += 1
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
    return status


def flood(http_port: int, ws_port: int, rate: float, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """80 % of `rate` pipelined over 4 keep-alive connections to the HTTP API's port; 20 % to the WebSocket
    port, one request per connection (it answers one plain HTTP request per connection, then closes)."""
    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_pipeline(http_port, 0.2 * rate, stop_at, counts) for _ in range(4)),
                             *(_pipeline(ws_port, 0.1 * rate, stop_at, counts, batch=1) for _ in range(2)))
        return counts

    out.put(dict(asyncio.run(main())))


def measure(mode: str, args: argparse.Namespace) -> tuple[float, float]:
    server = Server(mode, ["--http-limit-per-s", "1e9", "--http-limit-burst", "1000000000"] if args.no_limit else [])
    try:
        neighbour(server.port, 2)  # warm: first connections, the voice-less prompt path
        unloaded = neighbour(server.port, args.runs)
        queue: mp.Queue = mp.get_context("spawn").Queue()  # type: ignore[type-arg]
        seconds = 5.0 + args.runs * 3.0
        proc = mp.get_context("spawn").Process(target=flood, args=(server.http_port, server.port, args.rate,
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
        print(f"{mode}: server log lines: {server.lines('WARNING')} WARNING, {server.lines('ERROR')} ERROR")
        return statistics.median(unloaded), statistics.median(loaded)
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", choices=("process", "thread"), default=["process", "thread"])
    p.add_argument("--rate", type=float, default=1000.0, help="flood requests per second (default 1000)")
    p.add_argument("--runs", type=int, default=5, help="neighbour requests per measurement (default 5)")
    p.add_argument("--no-limit", action="store_true",
                   help="turn the per-address HTTP limiter off: every flood request gets a real answer")
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"per-address HTTP limiter: {'off' if args.no_limit else 'on (defaults)'}")
    print(f"flood: ~{args.rate:g} GETs/s of {', '.join(PATHS)} from one process at {FLOOD_ADDRESS}: 80 % pipelined "
          f"over keep-alive connections to the HTTP API's port, 20 % one per connection to the WebSocket port; "
          f"neighbour at 127.0.0.1: {args.runs} sequential speak requests ({PARAMS})")
    results = {mode: measure(mode, args) for mode in args.modes}
    print("; ".join(f"{mode}: loaded/unloaded = {loaded / unloaded:.2f} x" for mode, (unloaded, loaded)
                    in results.items()) + "  (target <= 3)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
