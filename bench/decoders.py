"""Compare the stateful and crossfade streaming decoders with a one-shot decode.

Both decoders are fed the same chunk schedule (so they face the same latency
constraints); for each we report the SNR of the streamed PCM against the one-shot
decode and the compute time per second of audio.

    python bench/decoders.py [--frames 300] [--repeats 2] [--threads N]
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


def stream(model, kind: str, codes: np.ndarray, sizes: list[int], **kw) -> tuple[np.ndarray, float]:
    """Feed codes [8, T] in chunks of `sizes`; return (pcm [T*320], seconds)."""
    dec = make_stream_decoder(model, kind, **kw)
    outs, i = [], 0
    t0 = time.perf_counter()
    for n in sizes:
        outs.append(dec.decode(codes[:, i: i + n]))
        i += n
    outs.append(dec.flush())
    return np.concatenate(outs), time.perf_counter() - t0


def best_of(repeats: int, fn) -> tuple[np.ndarray, float]:
    runs = [fn() for _ in range(repeats)]
    return runs[0][0], min(r[1] for r in runs)


def schedules(n_frames: int) -> dict[str, list[int]]:
    return {
        "7 then 1/frame": [7] + [1] * (n_frames - 7),
        "fixed 16": ChunkSchedule(16, 1.0, 16).split(n_frames),
        "8,16,32,64 (default)": ChunkSchedule().split(n_frames),
        "fixed 64": ChunkSchedule(64, 1.0, 64).split(n_frames),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300, help="frames of random codes (75 per second)")
    ap.add_argument("--repeats", type=int, default=2, help="timing runs per case (best is shown)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} | torch {torch.__version__}")
    print("dtype: float32 | weights: RANDOM (seeded, load_codec('random')) and uniform random codes;")
    print("  trained weights (longer LSTM memory) may need more crossfade context: re-run with them.")
    model = load_codec("random", seed=0)
    codes = np.random.default_rng(0).integers(0, CODEBOOK_SIZE, (N_FINE_CODEBOOKS, args.frames))
    audio_s = args.frames * 320 / SAMPLE_RATE
    decode_codes(model, codes)  # warm-up
    ref, t_ref = best_of(args.repeats, lambda: _timed(lambda: decode_codes(model, codes)))
    peak = float(np.abs(ref).max())
    print(f"audio: {args.frames} frames = {audio_s:.2f} s | one-shot: {1e3 * t_ref / audio_s:.1f} ms per audio s")
    print(f"{'schedule':22} {'decoder':28} {'SNR dB':>8} {'maxdiff/peak':>13} {'ms/audio s':>11}")
    for name, sizes in schedules(args.frames).items():
        cases = [("stateful", {})] + [
            ("crossfade", {"left_context": ctx, "crossfade": xf}) for ctx in (2, 5, 10) for xf in (0, 640)
            if xf <= ctx * 320
        ]
        for kind, kw in cases:
            y, t = best_of(args.repeats, lambda: stream(model, kind, codes, sizes, **kw))
            assert y.shape == ref.shape, (y.shape, ref.shape)
            label = kind if not kw else f"crossfade ctx={kw['left_context']} xf={kw['crossfade']}"
            print(f"{name:22} {label:28} {snr_db(ref, y):8.1f} {np.abs(y - ref).max() / peak:13.2e} "
                  f"{1e3 * t / audio_s:11.1f}")


def _timed(fn) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


if __name__ == "__main__":
    main()
