"""OpenAI's error shape for every HTTP API answer that is not audio.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "voice", "code": "invalid_value"}}

`message` names the field and the valid values, like the WebSocket protocol's
errors; `param` names the field (None when none is at fault); 429 and 503
answers carry `Retry-After` (seconds) so clients back off.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from protocol import ProtocolError
from streaming.errors import ErrorCode


class ApiError(Exception):
    """An HTTP API refusal; `response()` renders it in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, retry_after_s: float | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return web.Response(status=self.status, text=json.dumps(self.body()) + "\n",
                            content_type="application/json", headers=headers)


def bad_field(param: str, message: str, code: str = "invalid_value") -> ApiError:
    """400 naming `param`; `message` starts with the field's name, as WebSocket errors do."""
    return ApiError(400, message, param=param, code=code)


def unauthorised() -> ApiError:
    return ApiError(401, "missing or unknown API key (send it as Authorization: Bearer KEY, the same keys as "
                    "the WebSocket)", code="invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="bark-stream"'})


def rate_limited(message: str, retry_after_s: float) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="rate_limit_exceeded", retry_after_s=retry_after_s)


def unavailable(message: str, retry_after_s: float, code: str = "overloaded") -> ApiError:
    return ApiError(503, message, type="server_error", code=code, retry_after_s=retry_after_s)


# The request layer's error codes in OpenAI's shape: code -> (HTTP status, error type, OpenAI error code).
# The same codes travel as WebSocket `error` messages and Wyoming `error` events; each door has its table.
LAYER_ERRORS: dict[str, tuple[int, str, str]] = {
    ErrorCode.BAD_FRAME: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.TEXT_FRAME: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.UNKNOWN_TYPE: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.MISSING_FIELD: (400, "invalid_request_error", "missing_required_parameter"),
    ErrorCode.BAD_FIELD: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.UNKNOWN_FIELD: (400, "invalid_request_error", "unknown_parameter"),
    ErrorCode.TEXT_TOO_LONG: (400, "invalid_request_error", "string_above_max_length"),
    ErrorCode.FRAME_TOO_LARGE: (413, "invalid_request_error", "request_too_large"),
    ErrorCode.UNKNOWN_VOICE: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.BAD_ENCODING: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.DUPLICATE_ID: (409, "invalid_request_error", "duplicate_id"),
    ErrorCode.UNKNOWN_ID: (404, "invalid_request_error", "not_found"),
    ErrorCode.TOO_MANY_IDS: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.OVERLOADED: (503, "server_error", "overloaded"),
    ErrorCode.SLOW_CONSUMER: (408, "invalid_request_error", "slow_consumer"),
    ErrorCode.IDLE_TIMEOUT: (408, "invalid_request_error", "request_timeout"),
    ErrorCode.INTERNAL: (500, "server_error", "internal"),
    ErrorCode.SHUTTING_DOWN: (503, "server_error", "shutting_down"),
}
assert set(LAYER_ERRORS) == set(ErrorCode), "every ErrorCode needs its HTTP form"
FIELD_PARAMS = {"text": "input"}  # the layer's field names that OpenAI's body calls otherwise


def from_layer(exc: ProtocolError) -> ApiError:
    """A request-layer refusal or failure as an OpenAI-shaped answer (status, type, code, param, Retry-After)."""
    status, kind, code = LAYER_ERRORS[exc.code]
    param = FIELD_PARAMS.get(exc.field or "", exc.field)
    message = exc.message
    if param == "input" and message.startswith("text:"):
        message = "input:" + message[len("text:"):]
    retry = exc.retry_after_ms / 1000 if exc.retry_after_ms is not None else (5.0 if status == 503 else None)
    return ApiError(status, message, type=kind, param=param, code=code, retry_after_s=retry)
