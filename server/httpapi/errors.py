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
