"""Speed without a pitch change: ffmpeg's `atempo` time-stretch filter through PyAV, streamed.

`atempo` (WSOLA) takes factors 0.5-2.0 per instance without quality loss, so a
speed outside that range is a chain of instances (0.25 = 0.5 x 0.5; 4 = 2 x 2).
This is what OpenAI's `speed` means: the same voice, faster or slower, not
resampled (which would shift the pitch).
"""

from __future__ import annotations

import math

import av
import numpy as np
from av.filter import Graph

MIN_SPEED, MAX_SPEED = 0.25, 4.0


def tempo_factors(speed: float) -> list[float]:
    """`speed` as a product of factors in [0.5, 2.0], the range one atempo handles best."""
    if not MIN_SPEED <= speed <= MAX_SPEED or math.isnan(speed):
        raise ValueError(f"speed: {speed} is outside [{MIN_SPEED}, {MAX_SPEED}]")
    factors: list[float] = []
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    return [*factors, speed]


class TimeStretch:
    """Mono float32 at `rate` in, the same audio `speed` times faster out (pitch kept)."""

    def __init__(self, rate: int, speed: float) -> None:
        self.rate, self.speed = rate, speed
        self._graph = Graph()
        nodes = [self._graph.add_abuffer(format="flt", sample_rate=rate, layout="mono", time_base=f"1/{rate}")]
        nodes += [self._graph.add("atempo", f"{f:.6f}") for f in tempo_factors(speed)]
        nodes.append(self._graph.add("abuffersink"))
        for a, b in zip(nodes, nodes[1:]):
            a.link_to(b)
        self._graph.configure()
        self._pts = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The stretched samples available after this input (the filter keeps a window of lookahead)."""
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.size == 0:
            return x
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.rate, self._pts
        self._pts += x.size
        self._graph.push(frame)
        return self._drain()

    def finish(self) -> np.ndarray:
        """The rest, after the end of the input."""
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> np.ndarray:
        out: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.float32)
