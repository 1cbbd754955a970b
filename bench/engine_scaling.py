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

The last line reads `engine scaling: 64 streams = X x one stream, torch ops/tick 64 vs 1 = Y x`.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    ap.add_argument("--tokens", type=int, default=100, help="semantic tokens per stream (greedy)")
    args = ap.parse_args()
    serial_main_thread()
    print(machine())
    torch.manual_seed(0)
    parts = (load_models("random-tiny", device="cpu", dtype="fp32"), load_codec("random-tiny"),
             BarkTokenizer.from_vocab_file(ROOT / "tests" / "data" / "tokenizer" / "vocab.txt"))
    print(f"random-tiny GPTs, random-tiny EnCodec, greedy, {args.tokens} semantic tokens per stream")
    print(f"{'streams':>7} {'audio s/s':>9} {'x one':>6} {'ticks':>6} {'calls/tick':>10} {'ops/tick':>9} "
          f"{'ttfa mean':>9} {'ttfa max':>8}")
    rows = {}
    for n in args.streams:
        timed = run_pass(parts, n, args.tokens)
        counted = run_pass(parts, n, args.tokens, OpCounter())
        rate = timed["audio_s"] / timed["wall"]
        rows[n] = (rate, counted["ops_per_tick"])
        base = rows.get(args.streams[0], (rate, None))[0]
        print(f"{n:>7} {rate:>9.2f} {rate / base:>6.2f} {timed['ticks']:>6} {timed['calls_per_tick']:>10.2f} "
              f"{counted['ops_per_tick']:>9.0f} {timed['ttfa_mean']:>8.2f}s {timed['ttfa_max']:>7.2f}s", flush=True)
    if 1 in rows and len(rows) > 1:
        n = 64 if 64 in rows else max(rows)
        print(f"engine scaling: {n} streams = {rows[n][0] / rows[1][0]:.1f} x one stream, "
              f"torch ops/tick {n} vs 1 = {rows[n][1] / rows[1][1]:.2f} x")


if __name__ == "__main__":
    main()
