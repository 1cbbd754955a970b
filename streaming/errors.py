"""The exceptions callers of the engine can meet, one class per kind of mistake.

Every message names the field or file involved and what would fix it.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Every error code of protocol v1, in one table shared by the engine and the server.

    A member equals its string (`ErrorCode.BAD_FIELD == "bad_field"`), which is what goes
    on the wire; nothing matches codes against free text. Which codes close the
    connection is the server's business (protocol/errors.py).
    """

    BAD_FRAME = "bad_frame"  # not msgpack, trailing bytes, not a map, too deep, non-string key, ext type
    TEXT_FRAME = "text_frame"  # a text frame instead of a binary one
    UNKNOWN_TYPE = "unknown_type"  # `type` is not a client message type
    MISSING_FIELD = "missing_field"  # a required field is absent
    BAD_FIELD = "bad_field"  # a field has the wrong type or an invalid value (also: unusable text)
    UNKNOWN_FIELD = "unknown_field"  # a field (or params key) the message does not define
    TEXT_TOO_LONG = "text_too_long"  # text over max_text_chars / max_request_chars
    FRAME_TOO_LARGE = "frame_too_large"  # frame over max_frame_bytes
    UNKNOWN_VOICE = "unknown_voice"  # the server has no such voice
    BAD_ENCODING = "bad_encoding"  # encoding is not one of ENCODINGS
    DUPLICATE_ID = "duplicate_id"  # speak/start with an id already in flight
    UNKNOWN_ID = "unknown_id"  # text/flush/end/cancel for an id not in flight
    TOO_MANY_IDS = "too_many_ids"  # more than max_ids_in_flight requests at once
    RATE_LIMITED = "rate_limited"  # this connection sends requests too fast
    OVERLOADED = "overloaded"  # the server is full; `retry_after_ms` says when to retry
    SLOW_CONSUMER = "slow_consumer"  # the client reads audio too slowly
    IDLE_TIMEOUT = "idle_timeout"  # no message for too long
    INTERNAL = "internal"  # a bug or engine failure in one request
    SHUTTING_DOWN = "shutting_down"  # the server is stopping

    def __str__(self) -> str:
        return self.value


class BarkStreamError(Exception):
    """Base class of every error this project raises on purpose.

    `code` is what a client is told when such an error ends its request; `field`
    names the option or input at fault, when there is one (set where it is raised,
    never parsed back out of the message).
    """

    code: ErrorCode = ErrorCode.BAD_FIELD

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(BarkStreamError, ValueError):
    """An option has a value outside its valid range or set."""


class TextError(BarkStreamError, ValueError):
    """The text to speak is empty or otherwise unusable."""


class VoiceError(BarkStreamError, ValueError):
    """A voice preset name, file or array is unknown or malformed."""


class WeightsError(BarkStreamError):
    """Model weights could not be found, downloaded or read."""

    code = ErrorCode.INTERNAL  # the server's fault, not the request's


class EngineOverloaded(BarkStreamError):
    """The admission queue is full; try again after `retry_after_ms`."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms
