"""`POST /v1/audio/speech`: OpenAI's request body checked into a `SpeechCall`, and its audio streamed.

The body is sent as it is generated: chunked transfer encoding, each engine chunk
time-stretched (`speed`) and encoded (`response_format`) in a worker thread and
written at once. With `stream_format: "sse"` the same bytes travel base64-encoded
in `speech.audio.delta` events, then one `speech.audio.done`. Nothing is sent
before the first audio, so a request that fails before it gets a JSON error with
its real status; a failure after it cuts the body short (SSE: an `error` event).

A reader that stops reading stalls the writes once the socket buffers are full:
the request layer's credit pauses the engine stream meanwhile, and after
`slow_consumer_timeout` seconds it ends the request and the connection is dropped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from protocol import Limits, ProtocolError, parse_params
from protocol.wire import json_type, wire_type
from streaming.constants import SAMPLE_RATE
from streaming.params import SamplingParams, StreamPolicy

from ..formats import MAX_SPEED, MIN_SPEED
from ..formats.encoders import MIME
from ..requests import Audio, Done, Request
from .errors import ApiError, bad_field, from_layer

log = logging.getLogger(__name__)

# OpenAI's response_format -> our pipeline format. All at 24 kHz mono, like OpenAI's own (pcm: s16le).
RESPONSE_FORMATS = {"mp3": "mp3", "opus": "ogg_opus", "aac": "aac", "flac": "flac", "wav": "wav", "pcm": "pcm_s16le"}
STREAM_FORMATS = ("audio", "sse")
FIELDS = ("model", "input", "voice", "response_format", "speed", "stream_format", "instructions", "params")
MAX_NAME_CHARS = 256  # model and voice names
MAX_INSTRUCTIONS_CHARS = 4096


@dataclass(frozen=True)
class SpeechCall:
    """A checked `POST /v1/audio/speech` body."""

    model: str  # any name: clients send tts-1, gpt-4o-mini-tts, ...; this server has one model
    input: str
    voice: str | None  # a preset or an alias; None = the server's default voice
    response_format: str  # one of RESPONSE_FORMATS
    speed: float  # MIN_SPEED..MAX_SPEED, a time-stretch (pitch kept)
    stream_format: str  # audio | sse
    sampling: SamplingParams  # from the `params` extension (the WebSocket's params map)
    policy: StreamPolicy

    @property
    def pipeline_format(self) -> str:
        return RESPONSE_FORMATS[self.response_format]

    @property
    def content_type(self) -> str:
        if self.stream_format == "sse":
            return "text/event-stream"
        if self.response_format == "pcm":
            return f"audio/pcm;rate={SAMPLE_RATE};encoding=signed-int;bits=16;endian=little;channels=1"
        return MIME[self.pipeline_format]


def _string(body: Mapping[str, Any], key: str, *, max_chars: int, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise bad_field(key, f"{key}: missing (a string)", code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise bad_field(key, f"{key}: expected a string, got {wire_type(value)}")
    if len(value) > max_chars:
        raise bad_field(key, f"{key}: {len(value)} characters exceeds the maximum of {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" decodes to a lone surrogate, which the tokenizer refuses
        raise bad_field(key, f"{key}: not valid Unicode (a lone surrogate such as \\ud800)") from None
    return value


def _choice(body: Mapping[str, Any], key: str, valid: tuple[str, ...], default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in valid:
        shown = repr(value[:40]) if isinstance(value, str) else wire_type(value)
        raise bad_field(key, f"{key}: {shown} is not one of {', '.join(valid)}")
    return value


def _voice(body: Mapping[str, Any]) -> str | None:
    """A voice name, or OpenAI's object form {"id": name}."""
    value = body.get("voice")
    if isinstance(value, Mapping):
        value = value.get("id")
        if not isinstance(value, str):
            raise bad_field("voice", "voice: an object voice needs an \"id\" string")
    if value is not None and (not isinstance(value, str) or not value):
        raise bad_field("voice", f"voice: expected a voice name, got {wire_type(value)}")
    if value is not None and len(value) > MAX_NAME_CHARS:
        raise bad_field("voice", f"voice: {len(value)} characters exceeds the maximum of {MAX_NAME_CHARS}")
    return value


def _speed(body: Mapping[str, Any]) -> float:
    value = body.get("speed")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_field("speed", f"speed: expected a number from {MIN_SPEED} to {MAX_SPEED}, got {wire_type(value)}")
    if not (MIN_SPEED <= value <= MAX_SPEED) or math.isnan(value):
        raise bad_field("speed", f"speed: {value} is outside {MIN_SPEED} to {MAX_SPEED}")
    return float(value)


def parse_speech(raw: bytes, limits: Limits) -> SpeechCall:
    """Check a request body; ApiError (400) naming the field and its valid values otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc)
        if "integer string conversion" in reason:  # Python's own message names a Python setting
            reason = "a number has more digits than any field accepts"
        raise bad_field("body", f"body: not valid JSON ({reason})", code="invalid_json") from None
    except RecursionError:  # arrays or objects nested thousands deep: fits the size limit, not the parser
        raise bad_field("body", "body: not valid JSON (nested too deeply)", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_field("body", f"body: expected a JSON object, got {json_type(body)}", code="invalid_json")
    for key in body:
        if key not in FIELDS:
            raise bad_field(key, f"{key[:40]}: unknown parameter (valid: {', '.join(FIELDS)})",
                            code="unknown_parameter")
    model = _string(body, "model", max_chars=MAX_NAME_CHARS, required=True)
    text = _string(body, "input", max_chars=limits.max_request_chars, required=True)
    assert model is not None and text is not None
    if not text.strip():
        raise bad_field("input", "input: must not be empty or only whitespace")
    _string(body, "instructions", max_chars=MAX_INSTRUCTIONS_CHARS, required=False)  # accepted; Bark has no use
    try:
        sampling, policy = parse_params(body.get("params"))
    except ProtocolError as exc:
        raise bad_field(exc.field or "params", exc.message) from None
    return SpeechCall(model=model, input=text, voice=_voice(body),
                      response_format=_choice(body, "response_format", tuple(RESPONSE_FORMATS), "mp3"),
                      speed=_speed(body), stream_format=_choice(body, "stream_format", STREAM_FORMATS, "audio"),
                      sampling=sampling, policy=policy)


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class SpeechStream:
    """Writes one request's audio as the request layer hands it out; `run()` returns the response."""

    def __init__(self, request: web.Request, call: SpeechCall, speech: Request) -> None:
        self._request, self._call, self._speech = request, call, speech
        self._response: web.StreamResponse | None = None

    async def run(self) -> web.StreamResponse:
        done: Done | None = None
        try:
            async for event in self._speech.events():
                if isinstance(event, Audio):
                    await self._write(event.data)
                    self._speech.delivered(event)
                elif isinstance(event, Done):
                    done = event
            assert done is not None
            return await self._end(done)
        except (ApiError, ConnectionResetError):
            raise
        except Exception:  # noqa: BLE001 - an encoder bug ends this request, never the server
            if self._response is None:
                raise  # nothing sent yet: the middleware answers 500 in OpenAI's shape
            log.exception("http: request %s: failed mid-stream", self._speech.id)
            self._abort()
            return self._response

    async def _end(self, done: Done) -> web.StreamResponse:
        if done.reason == "end":
            await self._write(b"", last=True)
            if self._call.stream_format == "sse":
                chars, tokens = len(self._call.input), int(done.stats.get("tokens_semantic", 0))
                await self._write_raw(sse_event({"type": "speech.audio.done", "usage": {
                    "input_tokens": chars, "output_tokens": tokens, "total_tokens": chars + tokens}}))
            assert self._response is not None
            await self._response.write_eof()
            return self._response
        if done.reason in ("disconnected", "slow_consumer"):  # nobody is reading: drop the connection
            self._abort()
            return self._response or web.Response(status=499)
        error = from_layer(done.error) if done.error is not None else ApiError(
            500, "server error: the request was cancelled", type="server_error", code="internal")
        if self._response is None:  # nothing sent yet: a real status
            raise error
        if self._call.stream_format == "sse":
            await self._write_raw(sse_event({"type": "error", "error": error.body()["error"]}))
            await self._response.write_eof()
        else:
            self._abort()  # a cut chunked body: the client sees an incomplete response, not a short file
        return self._response

    async def _write(self, data: bytes, *, last: bool = False) -> None:
        if self._response is None and (data or last):
            self._response = web.StreamResponse(headers={"Content-Type": self._call.content_type,
                                                         "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
            await self._response.prepare(self._request)
            data = self._speech.header() + data
        if not data:
            return
        if self._call.stream_format == "sse":
            data = sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
        await self._write_raw(data)

    async def _write_raw(self, data: bytes) -> None:
        """One write; a reader that stalls it is the request layer's slow-consumer watcher's business
        (it ends the request and aborts the connection, which ends the write)."""
        assert self._response is not None
        await self._response.write(data)

    def _abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()
