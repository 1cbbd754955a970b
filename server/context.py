"""What every session shares (`ServerContext`), one request's state, and engine results as wire values."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streaming.engine import Engine, StreamHandle
from streaming.errors import ErrorCode
from streaming.events import StreamDone
from streaming.voices import Voice

from .config import ServerConfig
from .formats import AudioPipeline, Encoded, convert
from .metrics import ServerMetrics
from protocol import ERROR_CODES, ProtocolError
from .voices import VoiceCatalog, VoiceUnavailable

_VOICE_NAME = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?")  # names only: clients never pass paths


@dataclass(frozen=True)
class ServerContext:
    """What every session shares: the engine, the options, the metrics and the `ready` frame."""

    engine: Engine
    config: ServerConfig
    metrics: ServerMetrics
    ready_frame: bytes  # encoded once at startup
    voices: VoiceCatalog  # what `ready.voices` lists, and how a request's voice is loaded
    key_streams: Counter[int] = field(default_factory=Counter)  # requests in flight per API key index
    aliases: dict[str, str] = field(default_factory=dict)  # voice alias -> preset, only presets offered

    async def resolve_voice(self, name: str | None, req_id: str) -> Voice | None:
        """The voice a request asked for (or the default), loaded off the event loop; unknown_voice if none.
        An alias (OpenAI's `alloy`, ...) stands for its preset."""
        name = name if name is not None else self.config.default_voice
        if name is None:
            return None
        name = self.aliases.get(name, name)
        if not _VOICE_NAME.fullmatch(name):
            raise ProtocolError("unknown_voice", f"voice: {name[:40]!r} is not a voice name (letters, digits, "
                                "- and _, optionally one /, e.g. v2/en_speaker_6)", id=req_id)
        try:
            return await self.voices.resolve(name)
        except VoiceUnavailable as exc:  # the message is client-safe: no paths, no operator advice
            raise ProtocolError("unknown_voice", str(exc), id=req_id) from None


@dataclass(eq=False)
class RequestState:
    """Server-side state of one request id in flight."""

    id: str
    kind: str  # "speak" or "start"
    encoding: str  # one of protocol.ENCODINGS
    handle: StreamHandle
    sample_rate: int = 24_000  # Hz of the audio sent
    pipeline: AudioPipeline | None = None  # resampler and encoder, made when the request opens
    chars: int = 0  # characters received so far (start requests)
    ended: bool = False  # `end` received
    failure: ProtocolError | None = None  # set when the request must finish with `error` + `done(error)`
    pump: asyncio.Task[None] | None = None
    first_audio_at: float | None = None  # loop time the first audio was queued
    audio_s: float = 0.0  # audio queued so far
    least_lead_s: float | None = None  # least audio ahead of real time seen (None: fewer than two chunks)

    async def convert(self, samples: np.ndarray | None) -> Encoded:
        """The next 24 kHz chunk through the pipeline (None: its end), in a worker thread when that costs
        more than a sample-format conversion."""
        assert self.pipeline is not None
        return await convert(self.pipeline, samples)

    def scale(self, sample: int) -> int:
        """A 24 kHz sample offset at the request's rate (segment bounds)."""
        return sample * self.sample_rate // 24_000

    def track_lead(self, now: float, chunk_s: float) -> None:
        """Before queueing a chunk: how far ahead of a real-time listener (started at the first audio) we are."""
        if self.first_audio_at is None:
            self.first_audio_at = now
        else:
            lead = self.audio_s - (now - self.first_audio_at)
            self.least_lead_s = lead if self.least_lead_s is None else min(self.least_lead_s, lead)
        self.audio_s += chunk_s


def engine_failure(req_id: str, done: StreamDone | None) -> ProtocolError:
    """The `error` for a stream the engine ended with reason "error" (or that ended without `done`)."""
    if done is None:
        return ProtocolError("internal", "server error: the stream ended without a result", id=req_id)
    code = done.error_code or ErrorCode.INTERNAL  # the engine speaks ErrorCode values
    if code not in ERROR_CODES or ERROR_CODES[code] is not None:  # a connection-level code: not the engine's
        code = ErrorCode.INTERNAL
    return ProtocolError(code, done.error or "the engine failed this request", id=req_id)


def wire_stats(done: StreamDone | None) -> dict[str, float]:
    """StreamStats as the flat str -> number map `done.stats` carries (absent values left out)."""
    if done is None:
        return {}
    stats: dict[str, float] = {}
    for key, value in done.stats.as_dict().items():
        if isinstance(value, dict):
            suffix = "_ms" if key == "stage_ms" else ""
            prefix = "" if key == "stage_ms" else f"{key}_"
            stats.update({f"{prefix}{k}{suffix}": v for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            stats[key] = value
    return stats
