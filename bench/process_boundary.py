"""What the process boundary adds to one audio chunk: EngineProcess's child emit -> parent arrival.

The engine runs in its own process (server/enginelink/process.py); every audio frame
carries the child's `time.monotonic()` at the moment the engine emitted the chunk,
and the parent's reader task notes `time.monotonic()` when it has decoded the frame
(CLOCK_MONOTONIC is one clock for every process on Linux). The difference is what
the boundary costs a chunk: the child's writer thread waking, encoding and sending,
the kernel, the parent's event loop reading and decoding. It is measured with 1 and
with 64 streams in flight (random-tiny GPTs and EnCodec, max_streams 64, greedy),
where chunks of many streams leave together and queue behind one another.

    python bench/process_boundary.py                  # streams 1 64, 48 semantic tokens each
    python bench/process_boundary.py --streams 1 8 64 --tokens 100

The last line reads `process boundary: p50 X ms at 1 stream, Y ms at 64 streams (p95 ..., max ...)`.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import ROOT, machine

from server.enginelink import EngineProcess, EngineRequest
from streaming.events import StreamDone
from streaming.params import SamplingParams

LOAD = {"model": "random-tiny", "device": "cpu", "dtype": "fp32", "codec": "random-tiny",
        "tokenizer": str(ROOT / "tests" / "data" / "tokenizer")}
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def run_streams(link: EngineProcess, n: int, tokens: int) -> tuple[list[tuple[float, float]], float]:
    """n streams at once -> ((boundary latency, of which before the child's send) per audio chunk, wall s)."""
    lags: list[tuple[float, float]] = []
    link.on_audio_latency = lambda total, in_child: lags.append((total, in_child))
    sampling = SamplingParams(greedy=True, max_semantic_tokens=tokens)
    t0 = time.perf_counter()
    streams = [await link.submit(EngineRequest(text=f"Stream {i} says {WORDS[i % 8]} and {WORDS[(i // 8) % 8]}.",
                                               sampling=sampling, request_id=f"s{i}"))
               for i in range(n)]

    async def last(stream) -> StreamDone:
        event = None
        async for event in stream:
            pass
        return event

    dones = await asyncio.gather(*(last(s) for s in streams))
    wall = time.perf_counter() - t0
    link.on_audio_latency = None
    bad = [d for d in dones if d.reason != "end"]
    assert not bad, f"{len(bad)} streams did not end normally: {bad[0].reason} {bad[0].error}"
    return lags, wall


async def main_async(args: argparse.Namespace) -> None:
    link = await EngineProcess.start({**LOAD, "engine_config": {"max_streams": args.max_streams, "max_queue": 0}})
    try:
        await run_streams(link, 1, 8)  # one short request first: the parent's side warms up too
        print(f"random-tiny GPTs, random-tiny EnCodec, max_streams {args.max_streams}, greedy, "
              f"{args.tokens} semantic tokens per stream; latency = parent arrival - child emit, per audio chunk")
        print(f"{'streams':>7} {'chunks':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'wall s':>7}   "
              f"{'child p50':>9} {'p95':>7}   {'wire+parent p50':>15} {'p95':>7}")
        rows = {}
        for n in args.streams:
            lags, wall = await run_streams(link, n, args.tokens)
            ms = [1000 * total for total, _ in lags]
            child = [1000 * in_child for _, in_child in lags]  # emit -> the writer thread encodes it
            rest = [1000 * (total - in_child) for total, in_child in lags]  # -> decoded in the parent
            rows[n] = (percentile(ms, 0.5), percentile(ms, 0.95), max(ms))
            print(f"{n:>7} {len(ms):>7} {rows[n][0]:>8.3f} {rows[n][1]:>8.3f} {rows[n][2]:>8.3f} {wall:>7.2f}   "
                  f"{percentile(child, 0.5):>9.3f} {percentile(child, 0.95):>7.3f}   "
                  f"{percentile(rest, 0.5):>15.3f} {percentile(rest, 0.95):>7.3f}", flush=True)
    finally:
        await link.close()
    lo, hi = min(rows), max(rows)
    print(f"process boundary: p50 {rows[lo][0]:.2f} ms at {lo} stream{'s' if lo != 1 else ''}, "
          f"{rows[hi][0]:.2f} ms at {hi} streams (p95 {rows[lo][1]:.2f} / {rows[hi][1]:.2f} ms, "
          f"max {rows[lo][2]:.2f} / {rows[hi][2]:.2f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--tokens", type=int, default=48, help="semantic tokens per stream (greedy)")
    ap.add_argument("--max-streams", type=int, default=64, help="the engine's max_streams")
    args = ap.parse_args()
    if max(args.streams) > args.max_streams:
        ap.error(f"--streams: at most --max-streams ({args.max_streams}) at once")
    print(machine())
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
