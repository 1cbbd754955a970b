"""Client → server messages: typed dataclasses, a validating decoder, an encoder.

`decode_client_message` turns one untrusted frame into a typed message or
raises `ProtocolError` (never anything else); the client library builds its
frames with `encode_client_message`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from streaming.params import SamplingParams, StreamPolicy
from streaming.errors import ErrorCode

from .base import (
    DEFAULT_ENCODING,
    DEFAULT_SAMPLE_RATE,
    ENCODING_SAMPLE_RATES,
    ENCODINGS,
    MAX_ID_CHARS,
    MAX_VOICE_CHARS,
    SAMPLE_RATES,
    Limits,
    is_valid_id,
)
from .errors import ProtocolError
from .params import parse_params
from .wire import pack, unpack_map, wire_type


# --- client messages ------------------------------------------------------


@dataclass(frozen=True)
class Speak:
    """Synthesise a whole text as one request."""

    TYPE: ClassVar[str] = "speak"
    id: str
    text: str
    voice: str | None  # None = the server's default voice
    encoding: str  # one of ENCODINGS
    sampling: SamplingParams
    policy: StreamPolicy
    sample_rate: int = DEFAULT_SAMPLE_RATE  # Hz of the audio sent back: one of ENCODING_SAMPLE_RATES[encoding]


@dataclass(frozen=True)
class Start:
    """Open a request whose text follows in `Text` messages."""

    TYPE: ClassVar[str] = "start"
    id: str
    voice: str | None
    encoding: str
    sampling: SamplingParams
    policy: StreamPolicy
    sample_rate: int = DEFAULT_SAMPLE_RATE


@dataclass(frozen=True)
class Text:
    """Append text to a started request (may be empty)."""

    TYPE: ClassVar[str] = "text"
    id: str
    text: str


@dataclass(frozen=True)
class Flush:
    """Synthesise what the request has buffered so far, without ending it."""

    TYPE: ClassVar[str] = "flush"
    id: str


@dataclass(frozen=True)
class End:
    """No more text for this request: synthesise the rest and finish."""

    TYPE: ClassVar[str] = "end"
    id: str


@dataclass(frozen=True)
class Cancel:
    """Stop one request at once."""

    TYPE: ClassVar[str] = "cancel"
    id: str


@dataclass(frozen=True)
class Keepalive:
    """Nothing to do: keeps a connection with no request in flight from its idle timeout."""

    TYPE: ClassVar[str] = "keepalive"


ClientMessage = Union[Speak, Start, Text, Flush, End, Cancel, Keepalive]

# type -> (required fields, optional fields)
_CLIENT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "speak": (("id", "text"), ("voice", "encoding", "sample_rate", "params")),
    "start": (("id",), ("voice", "encoding", "sample_rate", "params")),
    "text": (("id", "text"), ()),
    "flush": (("id",), ()),
    "end": (("id",), ()),
    "cancel": (("id",), ()),
    "keepalive": ((), ()),
}


# --- decoding client frames (untrusted) -------------------------------------


def _clip(text: str, n: int = 40) -> str:
    """`text` shortened for an error message, quoted."""
    return repr(_short(text, n))


def _short(text: str, n: int = 40) -> str:
    """`text` cut to `n` characters for an error message."""
    return text if len(text) <= n else text[:n] + "..."


def _check_id(value: Any) -> str:
    if is_valid_id(value):
        return value
    if isinstance(value, str):
        if not value:
            problem = "must not be empty"
        elif len(value) > MAX_ID_CHARS:
            problem = f"{len(value)} characters exceeds the maximum of {MAX_ID_CHARS}"
        else:
            problem = f"{_clip(value)} may hold only letters, digits and - _ . :"
        raise ProtocolError(ErrorCode.BAD_FIELD, f"id: {problem}")
    hint = f' (send it as the string "{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
    raise ProtocolError(ErrorCode.BAD_FIELD, f"id: expected a string, got {wire_type(value)}{hint}")


def _check_text(value: Any, max_chars: int, limit_name: str, *, allow_blank: bool) -> str:
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"text: expected a string, got {wire_type(value)}")
    if len(value) > max_chars:
        raise ProtocolError(
            ErrorCode.TEXT_TOO_LONG, f"text: {len(value)} characters exceeds {limit_name} ({max_chars})"
        )
    if not allow_blank and not value.strip():
        raise ProtocolError(ErrorCode.BAD_FIELD, "text: must not be empty or only whitespace")
    return value


def _check_voice(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"voice: expected a string, got {wire_type(value)}")
    if not 1 <= len(value) <= MAX_VOICE_CHARS:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"voice: expected 1 to {MAX_VOICE_CHARS} characters, got {len(value)}")
    return value


def _check_encoding(value: Any) -> str:
    if value is None:
        return DEFAULT_ENCODING
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"encoding: expected a string, got {wire_type(value)}")
    if value not in ENCODINGS:
        raise ProtocolError(ErrorCode.BAD_ENCODING, f"encoding: {_clip(value)} is not one of {', '.join(ENCODINGS)}")
    return value


def _check_sample_rate(value: Any, encoding: str) -> int:
    """The request's output rate: nil = 24000; otherwise an int the encoding supports."""
    if value is None:
        value = DEFAULT_SAMPLE_RATE
    elif isinstance(value, bool) or not isinstance(value, int):
        hint = f" (send {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise ProtocolError(ErrorCode.BAD_FIELD, f"sample_rate: expected an integer, got {wire_type(value)}{hint}",
                            field="sample_rate")
    if value not in SAMPLE_RATES:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"sample_rate: {value} is not one of "
                            f"{', '.join(map(str, SAMPLE_RATES))}", field="sample_rate")
    valid = ENCODING_SAMPLE_RATES[encoding]
    if value not in valid:
        why = " (Opus runs only at its own rates)" if encoding == "ogg_opus" else ""
        raise ProtocolError(ErrorCode.BAD_FIELD, f"sample_rate: {encoding} supports {', '.join(map(str, valid))}{why}, "
                            f"not {value}", field="sample_rate")
    return value


def _check_shape(msg: Mapping[str, Any]) -> str:
    """Check `type` and the set of fields present; return the type."""
    if "type" not in msg:
        raise ProtocolError(ErrorCode.MISSING_FIELD, "type: missing")
    msg_type = msg["type"]
    if not isinstance(msg_type, str):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"type: expected a string, got {wire_type(msg_type)}")
    if msg_type not in _CLIENT_FIELDS:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"type: {_clip(msg_type)} is not one of {', '.join(_CLIENT_FIELDS)}"
        )
    required, optional = _CLIENT_FIELDS[msg_type]
    for key in msg:
        if key != "type" and key not in required and key not in optional:
            valid = ", ".join(("type",) + required + optional)
            raise ProtocolError(
                ErrorCode.UNKNOWN_FIELD, f"{_short(key)}: unknown field for {msg_type} (valid: {valid})")
    for key in required:
        if key not in msg:
            raise ProtocolError(ErrorCode.MISSING_FIELD, f"{key}: missing")
    return msg_type


def _build_client_message(msg: Mapping[str, Any], limits: Limits) -> ClientMessage:
    msg_type = _check_shape(msg)
    if msg_type == "keepalive":
        return Keepalive()
    req_id = _check_id(msg["id"])
    if msg_type == "text":
        return Text(req_id, _check_text(msg["text"], limits.max_text_chars, "max_text_chars", allow_blank=True))
    if msg_type in ("flush", "end", "cancel"):
        return {"flush": Flush, "end": End, "cancel": Cancel}[msg_type](req_id)
    text = None
    if msg_type == "speak":
        text = _check_text(msg["text"], limits.max_request_chars, "max_request_chars", allow_blank=False)
    voice = _check_voice(msg.get("voice"))
    encoding = _check_encoding(msg.get("encoding"))
    sample_rate = _check_sample_rate(msg.get("sample_rate"), encoding)
    sampling, policy = parse_params(msg.get("params"))
    if text is None:
        return Start(req_id, voice, encoding, sampling, policy, sample_rate)
    return Speak(req_id, text, voice, encoding, sampling, policy, sample_rate)


def decode_client_message(frame: bytes | str, limits: Limits) -> ClientMessage:
    """Validate one client frame into a typed message.

    Raises ProtocolError (and nothing else) for any malformed frame; its `id`
    is set whenever the frame carried a valid `id`.
    """
    if isinstance(frame, str):
        raise ProtocolError(ErrorCode.TEXT_FRAME, "text frames are not supported: send msgpack in binary frames")
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"expected bytes, got {type(frame).__name__}")
    msg = unpack_map(
        frame,
        max_bytes=limits.max_frame_bytes,
        max_map_keys=limits.max_map_keys,
        max_array_items=limits.max_array_items,
        max_depth=limits.max_depth,
    )
    try:
        return _build_client_message(msg, limits)
    except ProtocolError as exc:
        if exc.id is None and is_valid_id(msg.get("id")):
            exc.id = msg["id"]
        raise


def check_request_chars(req_id: str, total_chars: int, limits: Limits) -> None:
    """Raise text_too_long once a started request's accumulated text exceeds max_request_chars."""
    if total_chars > limits.max_request_chars:
        raise ProtocolError(
            ErrorCode.TEXT_TOO_LONG,
            f"text: request total of {total_chars} characters exceeds max_request_chars ({limits.max_request_chars})",
            id=req_id,
        )


def encode_client_message(msg: Mapping[str, Any]) -> bytes:
    """Pack a client message map (used by the client library and tests)."""
    if msg.get("type") not in _CLIENT_FIELDS:
        raise ValueError(f"type: {msg.get('type')!r} is not one of {', '.join(_CLIENT_FIELDS)}")
    return pack(msg)
