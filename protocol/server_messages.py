"""Server → client messages: builders for the server, a validating decoder for the client.

Builders return plain dicts (encode them with `encode_server_message`); the
decoder checks each message's type and required fields and ignores extra
fields, so a newer server can add fields without breaking an older client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streaming.constants import SAMPLE_RATE
from streaming.errors import ErrorCode

from .base import DONE_REASONS, ENCODING_SAMPLE_RATES, ENCODINGS, PROTOCOL_VERSION, SAMPLE_RATES, Limits
from .errors import ERROR_CODES, ProtocolError
from .wire import pack, unpack_map, wire_type

# Server frames are trusted more than client frames but still bounded.
MAX_SERVER_FRAME_BYTES = 16 * 1024 * 1024


def ready_message(
    model: str,
    voices: Sequence[str],
    limits: Limits,
    *,
    sample_rate: int = SAMPLE_RATE,
    extra_limits: Mapping[str, int] | None = None,
    voice_aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The `ready` message sent once after the connection opens.

    `sample_rate` is the model's own (and the default) rate; `sample_rates` what a request may ask
    for; `encoding_sample_rates` the rates each encoding accepts (Opus has its own set).
    """
    return {
        "type": "ready",
        "protocol": PROTOCOL_VERSION,
        "sample_rate": sample_rate,
        "channels": 1,
        "encodings": list(ENCODINGS),
        "sample_rates": list(SAMPLE_RATES),
        "encoding_sample_rates": {enc: list(rates) for enc, rates in ENCODING_SAMPLE_RATES.items()},
        "model": model,
        "voices": list(voices),
        "voice_aliases": dict(voice_aliases or {}),
        "limits": {**limits.to_wire(), **(extra_limits or {})},
    }


def audio_message(id: str, seq: int, sample: int, pcm: bytes) -> dict[str, Any]:  # noqa: A002
    """One chunk of audio: `seq` counts chunks of this id from 0, `sample` is its first sample's offset
    (compressed encodings: the samples given to the encoder before this chunk's input)."""
    if seq < 0 or sample < 0:
        raise ValueError(f"audio_message: seq ({seq}) and sample ({sample}) must be >= 0")
    return {"type": "audio", "id": id, "seq": seq, "sample": sample, "pcm": bytes(pcm)}


def segment_message(id: str, text: str, start_sample: int, end_sample: int) -> dict[str, Any]:  # noqa: A002
    """Which text the samples [start_sample, end_sample) speak."""
    if not 0 <= start_sample <= end_sample:
        raise ValueError(f"segment_message: need 0 <= start_sample ({start_sample}) <= end_sample ({end_sample})")
    return {"type": "segment", "id": id, "text": text, "start_sample": start_sample, "end_sample": end_sample}


def done_message(
    id: str, reason: str, samples: int, stats: Mapping[str, float] | None = None  # noqa: A002
) -> dict[str, Any]:
    """The last message of a request: why it ended, how many samples it sent, timings."""
    if reason not in DONE_REASONS:
        raise ValueError(f"done_message: reason {reason!r} is not one of {', '.join(DONE_REASONS)}")
    return {"type": "done", "id": id, "reason": reason, "samples": samples, "stats": dict(stats or {})}


def flushed_message(id: str) -> dict[str, Any]:  # noqa: A002
    """A `flush` was applied: the request's text so far is queued for synthesis."""
    return {"type": "flushed", "id": id}


def error_message(code: str, message: str, id: str | None = None, **extra: Any) -> dict[str, Any]:  # noqa: A002
    """An `error` message; `extra` carries e.g. `retry_after_ms` for `overloaded`."""
    if code not in ERROR_CODES:
        raise ValueError(f"error_message: code {code!r} is not one of {', '.join(ERROR_CODES)}")
    msg: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if id is not None:
        msg["id"] = id
    msg.update(extra)
    return msg


def encode_server_message(msg: Mapping[str, Any]) -> bytes:
    """Pack a server message map into one binary frame."""
    if msg.get("type") not in SERVER_FIELDS:
        raise ValueError(f"type: {msg.get('type')!r} is not one of {', '.join(SERVER_FIELDS)}")
    return pack(msg)


# --- decoding server frames (client side) -----------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "uint": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "bin": (lambda v: isinstance(v, bytes), "bin"),
    "map": (lambda v: isinstance(v, dict), "a map"),
    "str_list": (_is_str_list, "an array of strings"),
    "uint_list": (lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v), "an array of integers"),
    "reason": (lambda v: v in DONE_REASONS, f"one of {', '.join(DONE_REASONS)}"),
}

# type -> {field: check}; fields marked "?" are optional.
SERVER_FIELDS: dict[str, dict[str, str]] = {
    "ready": {"protocol": "uint", "sample_rate": "uint", "channels": "uint", "encodings": "str_list",
              "model": "str", "voices": "str_list", "limits": "map", "sample_rates?": "uint_list",
              "encoding_sample_rates?": "map", "voice_aliases?": "map"},
    "audio": {"id": "str", "seq": "uint", "sample": "uint", "pcm": "bin"},
    "segment": {"id": "str", "text": "str", "start_sample": "uint", "end_sample": "uint"},
    "done": {"id": "str", "reason": "reason", "samples": "uint", "stats": "map"},
    "flushed": {"id": "str"},
    "error": {"code": "str", "message": "str", "id?": "str", "retry_after_ms?": "uint"},
}


def _check_server_fields(msg: dict[str, Any]) -> None:
    msg_type = msg.get("type")
    if not isinstance(msg_type, str) or msg_type not in SERVER_FIELDS:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"type: {msg_type!r:.60} is not one of {', '.join(SERVER_FIELDS)}")
    for spec, check in SERVER_FIELDS[msg_type].items():
        key = spec.rstrip("?")
        if key not in msg:
            if spec.endswith("?"):
                continue
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{msg_type}.{key}: missing")
        ok, expected = _CHECKS[check]
        if not ok(msg[key]):
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"{msg_type}.{key}: expected {expected}, got {wire_type(msg[key])}")


def decode_server_message(frame: bytes, *, max_frame_bytes: int = MAX_SERVER_FRAME_BYTES) -> dict[str, Any]:
    """Unpack and validate one server frame; ProtocolError if it is not a valid v1 message."""
    if isinstance(frame, str):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "the server sent a text frame; protocol v1 uses binary frames")
    msg = unpack_map(frame, max_bytes=max_frame_bytes, max_map_keys=4096, max_array_items=65_536, max_depth=8)
    _check_server_fields(msg)
    return msg
