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
