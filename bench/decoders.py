"""Compare the stateful and crossfade streaming decoders with a one-shot decode.

Both decoders are fed the same chunk schedule (so they face the same latency
constraints); for each we report the SNR of the streamed PCM against the one-shot
decode and the compute time per second of audio.

    python bench/decoders.py [--frames 150] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streaming.codec import ChunkSchedule, decode_codes, load_codec, make_stream_decoder  # noqa: E402
from streaming.constants import CODEBOOK_SIZE, N_FINE_CODEBOOKS, SAMPLE_RATE  # noqa: E402


def snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    """10 log10(|ref|^2 / |y - ref|^2); inf when identical."""
    err = float(np.sum((y.astype(np.float64) - ref) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


def stream(model, kind: str, codes: np.ndarray, sizes: list[int], **kw) -> tuple[np.ndarray, float, float]:
    """Feed codes [8, T] in chunks of `sizes`; return (pcm [T*320], wall seconds, CPU seconds)."""
    dec = make_stream_decoder(model, kind, **kw)
    outs, i = [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for n in sizes:
        outs.append(dec.decode(codes[:, i: i + n]))
        i += n
    outs.append(dec.flush())
    return np.concatenate(outs), time.perf_counter() - t0, time.process_time() - c0


def schedules(n_frames: int) -> dict[str, list[int]]:
    return {
        "7 then 1/frame": [7] + [1] * (n_frames - 7),
        "fixed 16": ChunkSchedule(16, 1.0, 16).split(n_frames),
        "8,16,32,64 (default)": ChunkSchedule().split(n_frames),
        "fixed 64": ChunkSchedule(64, 1.0, 64).split(n_frames),
    }


def cases() -> list[tuple[str, str, dict]]:
    """(label, kind, options) for every decoder configuration compared."""
    out = [("stateful", "stateful", {})]
    for ctx in (2, 5, 10):
        for xf in (0, 640):
            out.append((f"crossfade ctx={ctx} xf={xf}", "crossfade", {"left_context": ctx, "crossfade": xf}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="frames of random codes (75 per second)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing runs per case (min is shown)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} | torch {torch.__version__}")
    print("dtype: float32 | weights: RANDOM (seeded, load_codec('random')) and uniform random codes;")
    print("  trained weights (longer LSTM memory) may need more crossfade context: re-run with them.")
    print("timing: min over interleaved repeats (wall and process CPU time); a busy machine inflates wall time.")
    model = load_codec("random", seed=0)
    codes = np.random.default_rng(0).integers(0, CODEBOOK_SIZE, (N_FINE_CODEBOOKS, args.frames))
    audio_s = args.frames * 320 / SAMPLE_RATE
    ref = decode_codes(model, codes)  # also warms up
    t_ref = min(_timed(lambda: decode_codes(model, codes)) for _ in range(args.repeats))
    peak = float(np.abs(ref).max())
    print(f"audio: {args.frames} frames = {audio_s:.2f} s | one-shot: {1e3 * t_ref / audio_s:.1f} ms per audio s")
    print(f"{'schedule':22} {'decoder':26} {'SNR dB':>7} {'maxdiff/peak':>12} {'wall ms/s':>10} {'cpu ms/s':>9}")
    for name, sizes in schedules(args.frames).items():
        runs: dict[str, list] = {label: [] for label, _, _ in cases()}
        for _ in range(args.repeats):  # interleave so a load spike hits one run, not one case
            for label, kind, kw in cases():
                runs[label].append(stream(model, kind, codes, sizes, **kw))
        for label, r in runs.items():
            y = r[0][0]
            assert y.shape == ref.shape, (y.shape, ref.shape)
            wall, cpu = min(x[1] for x in r), min(x[2] for x in r)
            print(f"{name:22} {label:26} {snr_db(ref, y):7.1f} {np.abs(y - ref).max() / peak:12.2e} "
                  f"{1e3 * wall / audio_s:10.1f} {1e3 * cpu / audio_s:9.1f}")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
