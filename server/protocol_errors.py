"""Protocol v1 error codes and `ProtocolError`, the one exception the wire layer raises.

Every code is stable: clients may branch on it. `ERROR_CODES` maps each code to
its WebSocket close code when the error ends the connection, or None when the
connection carries on (only the request named by `id`, if any, is affected).
"""

from __future__ import annotations

from typing import Any

# WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# code -> close code when fatal by default, None when the connection continues.
ERROR_CODES: dict[str, int | None] = {
    "bad_frame": None,  # not msgpack, trailing bytes, not a map, too deep, non-string key, ext type
    "text_frame": CLOSE_UNSUPPORTED_DATA,  # a text frame instead of a binary one
    "unknown_type": None,  # `type` is not a client message type
    "missing_field": None,  # a required field is absent
    "bad_field": None,  # a field has the wrong type or an invalid value
    "unknown_field": None,  # a field (or params key) the message does not define
    "text_too_long": None,  # text over max_text_chars / max_request_chars
    "frame_too_large": CLOSE_MESSAGE_TOO_BIG,  # frame over max_frame_bytes
    "unknown_voice": None,  # the server has no such voice
    "bad_encoding": None,  # encoding is not one of ENCODINGS
    "duplicate_id": None,  # speak/start with an id already in flight
    "unknown_id": None,  # text/flush/end/cancel for an id not in flight
    "too_many_ids": None,  # more than max_ids_in_flight requests at once
    "rate_limited": None,  # this connection sends requests too fast
    "overloaded": None,  # the server is full; `retry_after_ms` says when to retry
    "slow_consumer": CLOSE_POLICY_VIOLATION,  # the client reads audio too slowly
    "idle_timeout": CLOSE_POLICY_VIOLATION,  # no message for too long
    "internal": None,  # a bug or engine failure in one request
    "shutting_down": CLOSE_GOING_AWAY,  # the server is stopping
}


class ProtocolError(Exception):
    """A message broke protocol v1, or the server refuses it; becomes an `error` message.

    `fatal` errors end the connection with `close_code` after the `error`
    message is sent; the others affect only the request named by `id`.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        id: str | None = None,  # noqa: A002 - the wire field is called id
        fatal: bool | None = None,
        close_code: int | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"code: {code!r} is not one of {', '.join(ERROR_CODES)}")
        super().__init__(message)
        default_close = ERROR_CODES[code]
        self.code = code
        self.message = message
        self.id = id
        self.fatal = default_close is not None if fatal is None else fatal
        if self.fatal:
            self.close_code = close_code or default_close or CLOSE_POLICY_VIOLATION
        else:
            self.close_code = None
        self.retry_after_ms = retry_after_ms

    def to_message(self) -> dict[str, Any]:
        """The `error` message (a dict ready for `encode_server_message`)."""
        msg: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.id is not None:
            msg["id"] = self.id
        if self.retry_after_ms is not None:
            msg["retry_after_ms"] = self.retry_after_ms
        return msg

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, id={self.id!r}, fatal={self.fatal})"
