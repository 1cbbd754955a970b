"""Engine results as wire values: a failed stream's error, and StreamStats as the flat `done.stats` map."""

from __future__ import annotations

from protocol import ERROR_CODES, ProtocolError
from streaming.errors import ErrorCode
from streaming.events import StreamDone


def engine_failure(req_id: str, done: StreamDone | None) -> ProtocolError:
    """The `error` for a stream the engine ended with reason "error" (or that ended without `done`)."""
    if done is None:
        return ProtocolError(ErrorCode.INTERNAL, "server error: the stream ended without a result", id=req_id)
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
