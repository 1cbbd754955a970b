"""What a stream hands to its consumer: audio chunks, segment spans, and a final summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .constants import SAMPLE_RATE


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive PCM: samples [n] float32 in [-1, 1], 24 kHz mono, starting at `sample`."""

    sample: int  # offset of samples[0] from the start of the stream
    samples: np.ndarray  # float32 [n]

    def int16(self) -> np.ndarray:
        """The same audio as int16 [n] (clipped, rounded)."""
        return np.round(np.clip(self.samples, -1.0, 1.0) * 32767.0).astype(np.int16)


@dataclass(frozen=True)
class SegmentSpan:
    """Which text the audio in [start_sample, end_sample) speaks."""

    index: int
    text: str
    start_sample: int
    end_sample: int


@dataclass
class StreamStats:
    """Per-stream numbers, filled in as the stream runs."""

    ttfa_s: float | None = None  # submit -> first audio chunk handed out
    total_s: float = 0.0  # submit -> done
    queued_s: float = 0.0  # submit -> admitted into the engine
    stage_s: dict[str, float] = field(default_factory=dict)  # compute seconds per stage
    tokens: dict[str, int] = field(default_factory=dict)  # semantic tokens, coarse/fine frames
    samples: int = 0
    # the first-audio critical path: submit -> end of the first batch of each "stage action" this stream ran
    # (semantic/prefill, coarse/prefill, fine/window, decode/chunk, ...), and the semantic tokens that existed
    # when the first coarse window opened. Engine-side only (not in `as_dict`, so not on the wire).
    first_s: dict[str, float] = field(default_factory=dict)
    semantic_at_first_window: int | None = None

    @property
    def audio_s(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def rtf(self) -> float | None:
        """Wall time / audio time (below 1 = faster than real time)."""
        return self.total_s / self.audio_s if self.samples else None

    def as_dict(self) -> dict:
        return {
            "ttfa_ms": None if self.ttfa_s is None else round(self.ttfa_s * 1000, 1),
            "total_ms": round(self.total_s * 1000, 1),
            "queued_ms": round(self.queued_s * 1000, 1),
            "rtf": None if self.rtf is None else round(self.rtf, 4),
            "audio_ms": round(self.audio_s * 1000, 1),
            "stage_ms": {k: round(v * 1000, 1) for k, v in self.stage_s.items()},
            "tokens": dict(self.tokens),
        }


@dataclass(frozen=True)
class SegmentTokens:
    """Everything generated for one text segment (returned when the request asks for it)."""

    text: str
    semantic: np.ndarray  # int64 [N]
    coarse: np.ndarray  # int64 [2, T]
    fine: np.ndarray  # int64 [8, T]


@dataclass(frozen=True)
class StreamDone:
    """The last event of every stream."""

    reason: str  # "end" | "cancelled" | "error"
    samples: int  # total samples handed out
    stats: StreamStats
    error_code: str | None = None  # when reason == "error": e.g. "internal", "bad_text"
    error: str | None = None  # human-readable message
    tokens: list[SegmentTokens] | None = None  # per segment, if the request set return_tokens


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's occupancy at one moment."""

    active: int  # streams being advanced
    queued: int  # streams waiting for admission
    paused: int  # active streams paused by their consumer
    waiting_text: int = 0  # piecewise streams parked: their text so far is spoken, they hold no slot until more comes


Event = AudioChunk | SegmentSpan | StreamDone
