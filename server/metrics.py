"""Server metrics in Prometheus text format (exposition 0.0.4), without a client library.

Counters and histograms are updated on the event loop thread only; gauges that
belong to the engine (active streams, queue depth) are read at scrape time.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # seconds
RTF_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # wall time / audio time


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Histogram:
    """Cumulative-bucket histogram: observe() values, render() Prometheus lines."""

    name: str
    help: str
    buckets: Sequence[float]
    counts: list[int] = field(init=False)  # per bucket, not cumulative; last = +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        assert list(self.buckets) == sorted(self.buckets), self.buckets
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip([*self.buckets, math.inf], self.counts):
            running += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
        lines += [f"{self.name}_sum {_number(self.total)}", f"{self.name}_count {self.n}"]
        return lines


@dataclass
class ServerMetrics:
    """Everything /metrics reports that the server itself counts."""

    connections: int = 0  # open WebSocket connections
    requests_total: int = 0  # requests accepted by the engine
    finished: Counter[str] = field(default_factory=Counter)  # done reason -> count
    errors: Counter[str] = field(default_factory=Counter)  # error code -> `error` messages sent
    refused: Counter[str] = field(default_factory=Counter)  # handshakes refused: auth|origin|max_connections|...
    throttled: Counter[str] = field(default_factory=Counter)  # reads paused: over the bytes or frames budget
    ttfa: Histogram = field(
        default_factory=lambda: Histogram("bark_ttfa_seconds", "Submit to first audio chunk.", TTFA_BUCKETS)
    )
    rtf: Histogram = field(
        default_factory=lambda: Histogram("bark_rtf", "Wall time over audio time per finished request.", RTF_BUCKETS)
    )

    def record_done(self, reason: str, ttfa_s: float | None, rtf: float | None) -> None:
        """Count a finished request and its timings (those it has)."""
        self.finished[reason] += 1
        if ttfa_s is not None:
            self.ttfa.observe(ttfa_s)
        if rtf is not None and reason == "end":
            self.rtf.observe(rtf)

    def render(self, *, active_streams: int, queue_depth: int, healthy: bool, paused_streams: int = 0,
               owed_audio_s: float = 0.0) -> str:
        """The whole /metrics body; engine and connection gauges are passed in by the caller."""
        lines = [
            *_gauge("bark_up", "1 while the engine thread is alive.", int(healthy)),
            *_gauge("bark_active_streams", "Streams the engine is computing.", active_streams),
            *_gauge("bark_paused_streams", "Active streams paused because their reader is behind.", paused_streams),
            *_gauge("bark_queue_depth", "Streams waiting for admission.", queue_depth),
            *_gauge("bark_connections", "Open WebSocket connections.", self.connections),
            *_gauge("bark_unacknowledged_audio_seconds", "Audio queued or sent that clients have not "
                    "acknowledged, all connections.", round(owed_audio_s, 3)),
            "# HELP bark_requests_total Requests accepted by the engine.",
            "# TYPE bark_requests_total counter",
            f"bark_requests_total {self.requests_total}",
            *_labelled("bark_requests_finished_total", "Requests finished, by done reason.", "reason", self.finished),
            *_labelled("bark_errors_total", "Error messages sent, by code.", "code", self.errors),
            *_labelled("bark_handshakes_refused_total", "Upgrades refused, by reason.", "reason", self.refused),
            *_labelled("bark_reads_throttled_total", "Times a connection's socket stopped being read because it "
                       "sent more bytes or frames per second than allowed.", "budget", self.throttled),
            *self.ttfa.render(),
            *self.rtf.render(),
        ]
        return "\n".join(lines) + "\n"


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]


def _labelled(name: str, help_text: str, label: str, counts: Counter[str]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    lines += [f'{name}{{{label}="{_escape(key)}"}} {counts[key]}' for key in sorted(counts)]
    return lines
