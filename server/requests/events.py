"""What a request hands its front end: a `RequestSpec` in, these events out (`Request.events()`).

    Audio      encoded bytes of the request's format and rate, numbered from 0
    Segment    which text the audio in [start, end) speaks (samples at the request's rate)
    Flushed    the text sent before a flush is all synthesised
    Done       always last: why it ended, how much audio, stats; `error` when it failed

Front ends turn each into their wire form and nothing else: the life cycle
(admission, credit, deadlines, metrics) happened before the event was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import ProtocolError
from streaming.params import SamplingParams, StreamPolicy


@dataclass(frozen=True)
class RequestSpec:
    """A decoded request, whatever door it came through."""

    id: str  # unique among the client's requests in flight (the WebSocket's `id`; generated elsewhere)
    text: str | None  # the whole text; None: it follows through Request.feed() and ends with Request.end()
    voice: str | None = None  # a preset or an alias; None = the server's default voice
    sampling: SamplingParams = field(default_factory=SamplingParams)
    policy: StreamPolicy = field(default_factory=StreamPolicy)
    encoding: str = "pcm_s16le"  # one of protocol.ENCODINGS
    sample_rate: int = 24_000  # Hz of the audio handed out
    speed: float = 1.0  # time-stretch (pitch kept); 1 = none


@dataclass(frozen=True)
class Audio:
    seq: int  # 0, 1, 2, ... per request
    first_sample: int  # offset of this chunk's first sample at the request's rate
    data: bytes  # encoded audio
    seconds: float  # audio it carries (credit is counted in seconds)


@dataclass(frozen=True)
class Segment:
    text: str
    start: int  # samples at the request's rate
    end: int


@dataclass(frozen=True)
class Flushed:
    pass


@dataclass(frozen=True)
class Done:
    reason: str  # end | cancelled | error | disconnected | slow_consumer | idle_timeout
    samples: int  # samples handed out, at the request's rate
    stats: dict[str, float]  # the flat map `done.stats` carries
    error: ProtocolError | None = None  # why it failed (reason "error" and the deadline reasons)


RequestEvent = Audio | Segment | Flushed | Done
