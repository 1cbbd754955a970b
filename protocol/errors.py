"""Protocol v1 error codes and `ProtocolError`, the one exception the wire layer raises.

Every code is stable: clients may branch on it. `ERROR_CODES` maps each code to
its WebSocket close code when the error ends the connection, or None when the
connection carries on (only the request named by `id`, if any, is affected).
"""

from __future__ import annotations

from typing import Any

from streaming.errors import ErrorCode

# WebSocket close codes (RFC 6455, section 7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

# code -> close code when fatal by default, None when the connection continues (codes: ErrorCode).
ERROR_CODES: dict[str, int | None] = {
    ErrorCode.BAD_FRAME: None,
    ErrorCode.TEXT_FRAME: CLOSE_UNSUPPORTED_DATA,
    ErrorCode.UNKNOWN_TYPE: None,
    ErrorCode.MISSING_FIELD: None,
    ErrorCode.BAD_FIELD: None,
    ErrorCode.UNKNOWN_FIELD: None,
    ErrorCode.TEXT_TOO_LONG: None,
    ErrorCode.FRAME_TOO_LARGE: CLOSE_MESSAGE_TOO_BIG,
    ErrorCode.UNKNOWN_VOICE: None,
    ErrorCode.BAD_ENCODING: None,
    ErrorCode.DUPLICATE_ID: None,
    ErrorCode.UNKNOWN_ID: None,
    ErrorCode.TOO_MANY_IDS: None,
    ErrorCode.RATE_LIMITED: None,
    ErrorCode.OVERLOADED: None,
    ErrorCode.SLOW_CONSUMER: CLOSE_POLICY_VIOLATION,
    ErrorCode.IDLE_TIMEOUT: CLOSE_POLICY_VIOLATION,
    ErrorCode.INTERNAL: None,
    ErrorCode.SHUTTING_DOWN: CLOSE_GOING_AWAY,
}
assert set(ERROR_CODES) == set(ErrorCode), "every ErrorCode needs its close rule"


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
        field: str | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"code: {code!r} is not one of {', '.join(ERROR_CODES)}")
        super().__init__(message)
        default_close = ERROR_CODES[code]
        self.code = str(ErrorCode(code))  # the plain string, as on the wire
        self.message = message
        self.id = id
        self.fatal = default_close is not None if fatal is None else fatal
        if self.fatal:
            self.close_code = close_code or default_close or CLOSE_POLICY_VIOLATION
        else:
            self.close_code = None
        self.retry_after_ms = retry_after_ms
        self.field = field  # the field at fault (e.g. "params.top_k"), for callers; not sent on the wire

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
