"""The engine-scaling benchmark runs end to end at a tiny size (its figures are not checked: no timing in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_scaling_bench_runs() -> None:
    """bench/engine_scaling.py with 1 and 3 streams of 12 tokens: every stream ends, rows and summary printed."""
    out = subprocess.run([sys.executable, "engine_scaling.py", "--streams", "1", "3", "--tokens", "12"],
                         cwd=ROOT / "bench", capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "cores" in lines[0]  # the machine line
    assert [line.split()[0] for line in lines[3:5]] == ["1", "3"]
    assert lines[-1].startswith("engine scaling: 3 streams = ")


def test_gpu_bench_runs_on_cpu_at_tiny_size() -> None:
    """bench/gpu.py --device cpu: a real server subprocess and 1 then 2 real WebSocket listeners; figures printed."""
    out = subprocess.run([sys.executable, "gpu.py", "--device", "cpu", "--shape", "tiny", "--streams", "1", "2",
                          "--seconds", "0.5", "--large-streams"], cwd=ROOT / "bench", capture_output=True, text=True,
                         timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    rows = [line for line in lines if "streams" in line and "TTFA p50" in line]
    assert len(rows) == 2 and "failed" not in out.stdout, out.stdout
    assert lines[-1].startswith("largest stream count with zero underruns (tiny): ")


def test_jitter_buffer_underrun_count() -> None:
    """The listener model: steady arrivals never stall; one long gap stalls once, then playback rebuffers."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu import Listener

    steady = Listener(sent=0.0, arrivals=[(0.5 + 0.1 * i, 2400 * (i + 1)) for i in range(20)], done_at=2.5,
                      samples=48_000)
    assert steady.underruns(0.2) == 0 and steady.ttfa == 0.5
    gap = Listener(sent=0.0, arrivals=[(0.5 + 0.1 * i, 2400 * (i + 1)) for i in range(10)]
                   + [(3.0 + 0.1 * i, 24_000 + 2400 * (i + 1)) for i in range(10)], done_at=4.0, samples=48_000)
    assert gap.underruns(0.2) == 1
    assert abs(gap.rtf - 4.0 / 2.0) < 1e-9
