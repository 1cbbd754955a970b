"""Server metrics on prometheus-client, one registry per server.

The metric names are a contract (dashboards read them); they are the ones the
hand-written exposition used, plus the signals added for operators:

    bark_up, bark_active_streams, bark_paused_streams, bark_queue_depth, bark_connections,
    bark_unacknowledged_audio_seconds                                  gauges, read at scrape time
    bark_http_requests_in_flight                                       gauge (the HTTP API)
    bark_requests_total, bark_requests_finished_total{reason},
    bark_http_responses_total{endpoint,status},
    bark_errors_total{code}, bark_handshakes_refused_total{reason},
    bark_reads_throttled_total{budget}, bark_audio_seconds_total       counters
    bark_ttfa_seconds, bark_rtf, bark_queue_wait_seconds,
    bark_stage_seconds{stage}, bark_audio_ahead_seconds                histograms

`bark_audio_ahead_seconds` is the underrun signal: for each finished request, how
far its audio ran ahead of real time at its worst moment (first audio time plus
the time each later chunk needed, against the audio already sent); a value at or
below 0 means a real-time listener would have stalled.

Requests over the HTTP API count in the same request, audio and timing series as WebSocket
ones. Counters and histograms are updated on the event loop thread only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

disable_created_metrics()  # no *_created series: the names above are the whole contract

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)  # seconds
RTF_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # wall time / audio time
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds in the admission queue
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)  # engine seconds per request
AHEAD_BUCKETS = (-1.0, 0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds of audio ahead of real time


class ServerMetrics:
    """Everything /metrics reports; each server has its own registry (several can run in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.connections = 0  # open WebSocket connections (also a gauge)
        self._up = Gauge("bark_up", "1 while the engine thread is alive.", registry=r)
        self._active = Gauge("bark_active_streams", "Streams the engine is computing.", registry=r)
        self._paused = Gauge("bark_paused_streams", "Active streams paused because their reader is behind.",
                             registry=r)
        self._queue = Gauge("bark_queue_depth", "Streams waiting for admission.", registry=r)
        self._conns = Gauge("bark_connections", "Open WebSocket connections.", registry=r)
        self._owed = Gauge("bark_unacknowledged_audio_seconds",
                           "Audio queued or sent that clients have not acknowledged, all connections.", registry=r)
        self._requests = Counter("bark_requests", "Requests accepted by the engine.", registry=r)
        self._finished = Counter("bark_requests_finished", "Requests finished, by done reason.", ["reason"],
                                 registry=r)
        self._errors = Counter("bark_errors", "Error messages sent, by code.", ["code"], registry=r)
        self._refused = Counter("bark_handshakes_refused", "Upgrades refused, by reason.", ["reason"], registry=r)
        self._throttled = Counter("bark_reads_throttled", "Times a connection's socket stopped being read because "
                                  "it sent more bytes or frames per second than allowed.", ["budget"], registry=r)
        self._audio = Counter("bark_audio_seconds", "Audio sent to clients.", registry=r)
        self.http_in_flight = 0  # speech requests being answered over HTTP (also a gauge)
        self._http_in_flight = Gauge("bark_http_requests_in_flight", "Speech requests being answered over the "
                                     "HTTP API.", registry=r)
        self._http = Counter("bark_http_responses", "HTTP API answers, by endpoint and status code.",
                             ["endpoint", "status"], registry=r)
        self._ttfa = Histogram("bark_ttfa_seconds", "Submit to first audio chunk.", buckets=TTFA_BUCKETS, registry=r)
        self._rtf = Histogram("bark_rtf", "Wall time over audio time per finished request.", buckets=RTF_BUCKETS,
                              registry=r)
        self._wait = Histogram("bark_queue_wait_seconds", "Time a request waited for an engine slot.",
                               buckets=WAIT_BUCKETS, registry=r)
        self._stage = Histogram("bark_stage_seconds", "Engine time a finished request spent per stage.", ["stage"],
                                buckets=STAGE_BUCKETS, registry=r)
        self._ahead = Histogram("bark_audio_ahead_seconds", "Least audio a finished request had sent ahead of real "
                                "time (<= 0: a real-time listener would have stalled).", buckets=AHEAD_BUCKETS,
                                registry=r)

    # --- events ---------------------------------------------------------------------------------
    def connection_opened(self) -> None:
        self.connections += 1

    def connection_closed(self) -> None:
        self.connections -= 1

    def request_started(self) -> None:
        self._requests.inc()

    def error(self, code: str) -> None:
        self._errors.labels(code=code).inc()

    def refuse(self, reason: str) -> None:
        self._refused.labels(reason=reason).inc()

    def throttle(self, budget: str) -> None:
        self._throttled.labels(budget=budget).inc()

    def http_response(self, endpoint: str, status: int) -> None:
        self._http.labels(endpoint=endpoint, status=str(status)).inc()

    def audio_sent(self, seconds: float) -> None:
        self._audio.inc(seconds)

    def record_done(self, reason: str, ttfa_s: float | None, rtf: float | None, *, queued_s: float | None = None,
                    stage_s: dict[str, float] | None = None, ahead_s: float | None = None) -> None:
        """Count a finished request (exactly once per started request) and the timings it has."""
        self._finished.labels(reason=reason).inc()
        if ttfa_s is not None:
            self._ttfa.observe(ttfa_s)
        if rtf is not None and reason == "end":
            self._rtf.observe(rtf)
        if queued_s is not None:
            self._wait.observe(queued_s)
        for stage, seconds in (stage_s or {}).items():
            self._stage.labels(stage=stage).observe(seconds)
        if ahead_s is not None:
            self._ahead.observe(ahead_s)

    # --- scrape ---------------------------------------------------------------------------------
    def render(self, *, active_streams: int, queue_depth: int, healthy: bool, paused_streams: int = 0,
               owed_audio_s: float = 0.0) -> str:
        """The whole /metrics body; engine and connection gauges are passed in by the caller."""
        self._up.set(int(healthy))
        self._active.set(active_streams)
        self._paused.set(paused_streams)
        self._queue.set(queue_depth)
        self._conns.set(self.connections)
        self._http_in_flight.set(self.http_in_flight)
        self._owed.set(round(owed_audio_s, 3))
        return generate_latest(self.registry).decode("utf-8")
