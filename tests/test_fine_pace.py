"""The sliding fine policy's window sizes follow the stream's pace (stages/fine.py: `relaxed`).

A stream that is behind (or has just started) keeps the growing windows that make the first audio quick;
a stream whose audio is far enough ahead, at its own pace, waits for full windows: fewer windows,
each computing W positions for c new frames. The first window is never delayed.
"""

from __future__ import annotations

from streaming.params import StreamPolicy
from streaming.stages.fine import FIRST_NEW, plan_window, relaxed

POLICY = StreamPolicy()  # W = 256, R = 16 -> c = 120
C = (POLICY.fine_window - POLICY.fine_right_context) // 2
BEHIND = (-2.0, 0.3)  # 2 s behind the wall clock, 0.3 audio s per s
AHEAD = (20.0, 4.0)  # 20 s ahead, 4 audio s per s


def windows_for(frames: int, pace, step: int = 4) -> list[int]:
    """New frames of each window when coarse frames arrive `step` at a time (coarse done at the end)."""
    out, final, avail = [], 0, 0
    while final < frames:
        avail = min(frames, avail + step)
        while (w := plan_window(464, final, avail, avail == frames, POLICY, len(out), pace)) is not None:
            out.append(w.new)
            final += w.new
    return out


def test_relaxed_needs_audio_ahead_at_the_streams_pace():
    assert not relaxed((0.0, 10.0), 120)
    assert not relaxed((1.0, 0.5), 120)  # 120 frames = 1.6 s of audio, 3.2 s of wall at half real time
    assert relaxed((20.0, 4.0), 120)
    assert not relaxed((5.0, 0.0), 120)


def test_behind_keeps_growing_windows_ahead_takes_full_ones():
    behind, ahead = windows_for(600, BEHIND), windows_for(600, AHEAD)
    assert behind[:5] == [FIRST_NEW, 16, 32, 64, C]
    assert ahead[0] == FIRST_NEW and ahead[1] == C  # the first window is never delayed
    assert sum(behind) == sum(ahead) == 600
    assert len(ahead) < len(behind)
    assert all(n <= C + POLICY.fine_right_context for n in ahead)
