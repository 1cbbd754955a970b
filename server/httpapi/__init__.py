"""The OpenAI-compatible HTTP API (`POST /v1/audio/speech` and friends), served beside the WebSocket.

- `api`: `HttpApi`, the aiohttp application, its limits and its lifecycle;
- `speech`: the request body (`SpeechCall`) and the streamed answer (`SpeechStream`);
- `errors`: `ApiError` in OpenAI's error shape.
"""

from .api import HttpApi
from .errors import ApiError
from .speech import RESPONSE_FORMATS, STREAM_FORMATS, SpeechCall, parse_speech

__all__ = ["HttpApi", "ApiError", "SpeechCall", "parse_speech", "RESPONSE_FORMATS", "STREAM_FORMATS"]
