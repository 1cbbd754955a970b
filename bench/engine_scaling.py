"""The engine's own cost per stream: how aggregate throughput and torch ops per tick grow with streams.

Random-tiny GPTs and a tiny random EnCodec (same architectures, few channels) make
model compute negligible, so what is measured is what the engine adds per stream:
Python bookkeeping and the number of torch ops (on a GPU, each op is a kernel
launch). For each stream count N, N greedy requests of 100 semantic tokens each
run together through one engine:

- a timed pass: aggregate audio seconds per wall second (and its multiple of one
  stream's), ticks, batched model calls per tick, mean and max time to first audio;
- a separate counting pass with a TorchDispatchMode entered on the engine thread,
  so counting does not slow the timed pass: torch ops per tick.

    python bench/engine_scaling.py                       # streams 1 8 32 64 128
    python bench/engine_scaling.py --streams 1 8 --tokens 40
    python bench/engine_scaling.py --streams 1 64 --engine thread process

`--engine process` runs each timed pass through an EngineProcess (the engine in its
own process, server/enginelink/process.py) instead of an Engine in this process;
ticks and torch ops are counted in this process only, so those columns read "-".

The last line (per engine mode, in the order given) reads
`engine scaling: 64 streams = X x one stream, torch ops/tick 64 vs 1 = Y x`, and for the
process mode `engine scaling (process): 64 streams = X x one stream, Z x the thread mode's audio s/s`
(the comparison only when both ran).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import ROOT, machine

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from streaming.codec import load_codec
from streaming.engine import Engine, EngineConfig
from streaming.events import StreamDone
from streaming.params import SamplingParams
from streaming.stream import SpeechRequest
from streaming.threads import serial_main_thread
from streaming.tokenizer import BarkTokenizer
from streaming.weights import load_models


class OpCounter(TorchDispatchMode):
    """Counts every torch op dispatched on the thread that entered it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def requests(n: int, tokens: int) -> list[SpeechRequest]:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return [SpeechRequest(text=f"Stream {i} says {words[i % 8]} and {words[(i // 8) % 8]}.",
                          sampling=SamplingParams(greedy=True, max_semantic_tokens=tokens), request_id=f"s{i}")
            for i in range(n)]


def run_pass(parts, n: int, tokens: int, counter: OpCounter | None = None) -> dict:
    models, codec, tok = parts
    engine = Engine(models, codec, tok, EngineConfig(max_streams=n, max_queue=0),
                    thread_context=(lambda: counter) if counter is not None else None)
    engine.start()
    ops0, c0 = (counter.ops if counter else 0), engine.counters
    ticks0, calls0 = c0.ticks, c0.model_calls
    t0 = time.perf_counter()
    handles = [engine.submit(r) for r in requests(n, tokens)]
    dones = []
    for h in handles:
        for event in h.events(timeout=1800):
            if isinstance(event, StreamDone):
                dones.append(event)
    wall = time.perf_counter() - t0
    engine.stop()
    bad = [d for d in dones if d.reason != "end"]
    assert not bad, f"{len(bad)} streams did not end normally: {bad[0].reason} {bad[0].error}"
    ticks = engine.counters.ticks - ticks0
    ttfa = [d.stats.ttfa_s for d in dones]
    return {
        "audio_s": sum(d.samples for d in dones) / 24_000, "wall": wall, "ticks": ticks,
        "calls_per_tick": (engine.counters.model_calls - calls0) / max(ticks, 1),
        "ops_per_tick": ((counter.ops - ops0) / max(ticks, 1)) if counter else None,
        "ttfa_mean": sum(ttfa) / len(ttfa), "ttfa_max": max(ttfa),
    }


def run_process_pass(n: int, tokens: int) -> dict:
    """The timed pass through an EngineProcess: the same requests, the engine in a child process."""
    from server.enginelink import EngineProcess, EngineRequest

    load = {"model": "random-tiny", "device": "cpu", "dtype": "fp32", "codec": "random-tiny",
            "tokenizer": str(ROOT / "tests" / "data" / "tokenizer"),
            "engine_config": {"max_streams": n, "max_queue": 0}}

    async def last(stream) -> StreamDone:
        event = None
        async for event in stream:
            pass
        return event

    async def go() -> tuple[list[StreamDone], float]:
        link = await EngineProcess.start(load)
        try:
            t0 = time.perf_counter()
            streams = [await link.submit(EngineRequest(text=r.text, sampling=r.sampling, request_id=r.request_id))
                       for r in requests(n, tokens)]
            dones = await asyncio.gather(*(last(s) for s in streams))
            return dones, time.perf_counter() - t0
        finally:
            await link.close()

    dones, wall = asyncio.run(go())
    bad = [d for d in dones if d.reason != "end"]
    assert not bad, f"{len(bad)} streams did not end normally: {bad[0].reason} {bad[0].error}"
    ttfa = [d.stats.ttfa_s for d in dones]
    return {"audio_s": sum(d.samples for d in dones) / 24_000, "wall": wall,
            "ttfa_mean": sum(ttfa) / len(ttfa), "ttfa_max": max(ttfa)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    ap.add_argument("--tokens", type=int, default=100, help="semantic tokens per stream (greedy)")
    ap.add_argument("--engine", nargs="+", choices=("thread", "process"), default=["thread"],
                    help="where the engine runs: a thread of this process (default), its own process "
                         "(EngineProcess), or both in turn")
    args = ap.parse_args()
    serial_main_thread()
    print(machine())
    torch.manual_seed(0)
    print(f"random-tiny GPTs, random-tiny EnCodec, greedy, {args.tokens} semantic tokens per stream")
    closing, rates = [], {}
    for mode in dict.fromkeys(args.engine):
        if len(args.engine) > 1:
            print(f"engine: {mode}" + (" (EngineProcess; ticks and torch ops are counted in thread mode only)"
                                       if mode == "process" else " (Engine in this process)"))
        print(f"{'streams':>7} {'audio s/s':>9} {'x one':>6} {'ticks':>6} {'calls/tick':>10} {'ops/tick':>9} "
              f"{'ttfa mean':>9} {'ttfa max':>8}")
        rows = rates[mode] = {}
        if mode == "thread":
            parts = (load_models("random-tiny", device="cpu", dtype="fp32"), load_codec("random-tiny"),
                     BarkTokenizer.from_vocab_file(ROOT / "tests" / "data" / "tokenizer" / "vocab.txt"))
        for n in args.streams:
            if mode == "thread":
                timed = run_pass(parts, n, args.tokens)
                counted = run_pass(parts, n, args.tokens, OpCounter())
                ticks, calls, ops = (f"{timed['ticks']:>6}", f"{timed['calls_per_tick']:>10.2f}",
                                     f"{counted['ops_per_tick']:>9.0f}")
            else:
                timed, counted = run_process_pass(n, args.tokens), {"ops_per_tick": None}
                ticks, calls, ops = f"{'-':>6}", f"{'-':>10}", f"{'-':>9}"
            rate = timed["audio_s"] / timed["wall"]
            rows[n] = (rate, counted["ops_per_tick"])
            base = rows.get(args.streams[0], (rate, None))[0]
            print(f"{n:>7} {rate:>9.2f} {rate / base:>6.2f} {ticks} {calls} {ops} "
                  f"{timed['ttfa_mean']:>8.2f}s {timed['ttfa_max']:>7.2f}s", flush=True)
        if 1 in rows and len(rows) > 1:
            n = 64 if 64 in rows else max(rows)
            if mode == "thread":
                closing.append(f"engine scaling: {n} streams = {rows[n][0] / rows[1][0]:.1f} x one stream, "
                               f"torch ops/tick {n} vs 1 = {rows[n][1] / rows[1][1]:.2f} x")
            else:
                versus = (f", {rows[n][0] / rates['thread'][n][0]:.2f} x the thread mode's audio s/s"
                          if n in rates.get("thread", {}) else "")
                closing.append(f"engine scaling (process): {n} streams = {rows[n][0] / rows[1][0]:.1f} x one stream"
                               + versus)
    for line in closing:
        print(line)


if __name__ == "__main__":
    main()
