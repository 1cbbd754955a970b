"""`HttpApi`: the OpenAI-compatible HTTP endpoints on `--http-port`, beside the WebSocket server.

    POST /v1/audio/speech    OpenAI's text-to-speech call, streamed (speech.py)
    GET  /v1/models          OpenAI's model list: this server's model, plus the names apps send
    GET  /v1/audio/voices    {"voices": [{"id", "name"}, ...]}: presets and aliases (Kokoro-FastAPI's shape,
                             which Open WebUI reads to fill its voice menu)
    GET  /v1/audio/models    {"models": [{"id"}, ...]} (the same apps' model menu)
    GET  /healthz, /metrics  the same answers as on the WebSocket port

aiohttp serves it on the same event loop as the WebSocket server (uvloop when
present) and it uses the same engine, API keys, voices, limits and metrics:
one `RequestLayer`. Every limit has its HTTP form: input size, body size, a
request rate per client address, requests in flight (all clients, per address,
per API key), open connections (connections.py), the engine's queue (503 +
Retry-After), and a stalled reader. Browser pages on other origins: cors.py.
A client that disconnects cancels its generation: aiohttp cancels the handler
(`handler_cancellation=True`) and the handler cancels the engine stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from protocol import ProtocolError
from streaming.constants import SAMPLE_RATE

from ..auth import KeySet, RateLimitedWarning, client_address
from ..limits import AddressBuckets
from ..probes import Probes
from ..requests import Client, RequestLayer, RequestSpec
from .connections import ConnectionCap
from .cors import Cors
from .errors import ApiError, bad_field, from_layer, rate_limited, unauthorised, unavailable
from .speech import SpeechCall, SpeechStream, parse_speech

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # Retry-After when the server is stopping or full of HTTP requests
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # names apps send; all served by the one model
MAX_TRACKED_ADDRESSES = 4096  # per-address rate buckets kept; idle ones are dropped beyond this


class _Credentials:
    """What `KeySet` reads from a request (headers and target), from an aiohttp request."""

    def __init__(self, request: web.Request) -> None:
        self.path = request.path_qs
        self.headers = self
        self._headers = request.headers

    def get_all(self, name: str) -> list[str]:
        return list(self._headers.getall(name, []))


class _CappedRunner(web.AppRunner):
    """aiohttp's runner whose listeners open connections within `cap`'s limits (ConnectionCap)."""

    def __init__(self, app: web.Application, cap: Callable[[Callable[[], Any]], ConnectionCap],
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._make_cap = cap
        self._cap: ConnectionCap | None = None

    @property
    def server(self) -> Any:  # what TCPSite hands to loop.create_server as the protocol factory
        inner = super().server
        if inner is None:
            return None
        if self._cap is None:
            self._cap = self._make_cap(inner)
        return self._cap


class _ParseErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection logger: a request it cannot parse (the client's fault, answered 400) is one info line,
    not an ERROR with a traceback that any client could repeat to flood the log; other errors keep theirs."""

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, (HttpProcessingError, web.RequestPayloadError)):
            self.info("http: " + str(msg) + ": %s", *args, str(exc_info).replace("\n", " ")[:200])
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpApi:
    """The HTTP API over the request layer; `start()` listens, `drain()` and `close()` stop it."""

    def __init__(self, layer: RequestLayer, keys: KeySet, probes: Probes) -> None:
        self._layer = layer
        self._keys = keys
        self._probes = probes
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._draining = False
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()  # speech handlers in flight
        cfg = layer.config
        self._speech_rate = AddressBuckets(cfg.http_requests_per_s, cfg.http_request_burst, MAX_TRACKED_ADDRESSES)
        self._auth_warning = RateLimitedWarning(log)
        self._cors = Cors(self._layer.config.allowed_origins)

    # --- lifecycle ---------------------------------------------------------------------

    def app(self) -> web.Application:
        limits = self._layer.config.limits
        # a JSON body of max_request_chars characters: at most 6 bytes each (\uXXXX escapes), plus the fields
        app = web.Application(client_max_size=6 * limits.max_request_chars + 16_384, middlewares=[self._guard])
        app.on_response_prepare.append(self._cors.on_prepare)
        app.router.add_post("/v1/audio/speech", self._speech, name="speech")
        app.router.add_get("/v1/models", self._models, name="models")
        app.router.add_get("/v1/models/{model}", self._model, name="model")
        app.router.add_get("/v1/audio/voices", self._voices, name="voices")
        app.router.add_get("/v1/audio/models", self._audio_models, name="audio_models")
        self._probes.aiohttp_routes(app)
        return app

    async def start(self, host: str, port: int, ssl_context: Any = None) -> None:
        cfg = self._layer.config
        # aiohttp keeps a connection with no request (or half a request head) for an hour by default: the idle
        # timeout closes it, as on the WebSocket port, so such connections cannot fill --http-max-connections
        idle = {} if cfg.idle_timeout is None else {"keepalive_timeout": cfg.idle_timeout}
        def cap(make: Callable[[], Any]) -> ConnectionCap:
            return ConnectionCap(make, cfg.http_max_connections, self._layer.metrics.refuse,
                                 self._layer.admission, trusted=cfg.trusted_proxies)

        self._runner = _CappedRunner(self.app(), cap, handler_cancellation=True, access_log=None,
                                     logger=_ParseErrorLog(log), **idle)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, shutdown_timeout=self._layer.config.close_timeout,
                                 ssl_context=ssl_context)
        await self._site.start()
        log.info("OpenAI-compatible HTTP API on %s://%s:%d/v1/audio/speech", "http" if ssl_context is None
                 else "https", host, self.port)

    @property
    def port(self) -> int:
        assert self._runner is not None, "HttpApi.port: not started"
        return int(self._runner.addresses[0][1])

    @property
    def busy(self) -> bool:
        """True while a speech request is being answered."""
        return bool(self._tasks)

    def drain(self) -> None:
        """New speech requests get 503 + Retry-After; those in flight go on."""
        self._draining = True

    async def close(self) -> None:
        """Cancel the speech requests in flight (their engine streams with them) and stop listening."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._layer.config.close_timeout)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- every request -------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Keys for /v1/* (and /metrics unless public); every refusal in OpenAI's error shape; counted."""
        route = request.match_info.route.name or "unmatched"
        if not self._layer.admission.http_request(self._address(request), time.monotonic()):
            self._layer.metrics.refuse("http_rate")  # before any other work, whatever the path
            response = rate_limited(f"more than {self._layer.config.http_limit_per_s:g} HTTP requests per second "
                                    "from your address; slow down", 1.0).response()
            self._layer.metrics.http_response(route, response.status)
            return response
        try:
            refusal = self._cors.refusal(request)
            if refusal is not None:
                self._layer.metrics.refuse("origin")
                raise refusal
            preflight = self._cors.preflight(request)
            if preflight is not None and isinstance(request.match_info.http_exception,
                                                    (type(None), web.HTTPMethodNotAllowed)):
                self._layer.metrics.http_response("preflight", preflight.status)
                return preflight  # (no key: browsers send none with a preflight)
            if (request.path.startswith("/v1/") or (route == "metrics" and not self._layer.config.public_metrics)) \
                    and not self._keys.allows(_Credentials(request)):  # type: ignore[arg-type]
                self._layer.metrics.refuse("auth")
                self._auth_warning(time.monotonic(), "refused %s %s from %s: missing or unknown API key",
                                   request.method, request.path[:100], request.remote)
                raise unauthorised()
            response = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # routing (404, 405) and body size (413)
            if exc.status < 400:
                raise
            response = self._http_error(request, exc).response()
        except ConnectionResetError:  # the client went away mid-answer; nothing left to tell it
            response = web.Response(status=499)
        except Exception:
            log.exception("http: %s %s failed", request.method, request.path[:100])
            response = ApiError(500, "server error", type="server_error", code="internal").response()
        self._layer.metrics.http_response(route, response.status)
        return response

    def _http_error(self, request: web.Request, exc: web.HTTPException) -> ApiError:
        if exc.status == 404:
            return ApiError(404, f"not found: {request.path[:100]} (this server answers POST /v1/audio/speech, "
                            "GET /v1/models, /v1/audio/voices, /v1/audio/models, /healthz and /metrics)",
                            code="not_found")
        if exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            return ApiError(405, f"method: {request.method} is not allowed on {request.path[:100]} "
                            f"(allowed: {allowed})", code="method_not_allowed")
        if exc.status == 413:
            return ApiError(413, f"body: larger than {request.app._client_max_size} bytes "  # noqa: SLF001
                            f"(input is limited to {self._layer.config.limits.max_request_chars} characters)",
                            param="input", code="request_too_large")
        return ApiError(exc.status, exc.reason or "bad request")

    def _address(self, request: web.Request) -> str:
        return client_address(request.remote or "", list(request.headers.getall("X-Forwarded-For", [])),
                              self._layer.config.trusted_proxies)

    def _check_rate(self, address: str) -> None:
        cfg = self._layer.config
        if not self._speech_rate.take(address, time.monotonic()):
            raise rate_limited(f"more than {cfg.http_requests_per_s:g} speech requests per second from your "
                               f"address (burst {cfg.http_request_burst}); retry later",
                               1.0 / cfg.http_requests_per_s)

    # --- POST /v1/audio/speech ---------------------------------------------------------

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        layer, cfg = self._layer, self._layer.config
        if self._draining:
            raise unavailable("the server is stopping and takes no new requests; retry later", RETRY_AFTER_S,
                              code="shutting_down")
        address = self._address(request)
        self._check_rate(address)
        limit = request.app._client_max_size  # noqa: SLF001 - the size aiohttp enforces while reading
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"body: {request.content_length} bytes exceeds {limit} (input is limited to "
                           f"{cfg.limits.max_request_chars} characters)", param="input", code="request_too_large")
        try:  # bounded like the WebSocket's handshake: a body that stops coming would hold the connection forever
            body = await asyncio.wait_for(request.read(), cfg.open_timeout)
        except asyncio.TimeoutError:
            raise ApiError(408, f"body: not received within {cfg.open_timeout:g} s", param="body",
                           code="request_timeout") from None
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding its bytes do not decode with
            raise bad_field("body", f"body: {str(exc.__cause__ or exc).splitlines()[-1].strip()[:200]}",
                            code="invalid_body") from None
        call = parse_speech(body, cfg.limits)
        if len(self._tasks) >= cfg.http_max_requests:
            raise unavailable(f"the HTTP API is answering its maximum of {cfg.http_max_requests} requests "
                              "(--http-max-requests); retry later", RETRY_AFTER_S)
        key = self._keys.which(_Credentials(request)) if self._keys else None  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        layer.metrics.http_in_flight += 1
        transport = request.transport
        client = layer.client(conn_id=f"http{next(self._ids)}", address=address, key=key, owner=f"http {address}",
                              on_fatal=lambda _error: transport.abort() if transport is not None else None)
        try:
            return await self._answer(request, call, client)
        finally:
            await client.close()
            self._tasks.discard(task)
            layer.metrics.http_in_flight -= 1

    async def _answer(self, request: web.Request, call: SpeechCall, client: Client) -> web.StreamResponse:
        spec = RequestSpec(id="speech", text=call.input, voice=call.voice, sampling=call.sampling,
                           policy=call.policy, encoding=call.pipeline_format, sample_rate=SAMPLE_RATE,
                           speed=call.speed)
        try:
            speech = await client.open(spec)
        except ProtocolError as exc:
            raise from_layer(exc) from None
        log.info("http: %s from %s: %d characters, voice %s, %s%s, speed %g", client.conn_id, client.address,
                 len(call.input), call.voice or self._layer.config.default_voice, call.response_format,
                 " (sse)" if call.stream_format == "sse" else "", call.speed)
        return await SpeechStream(request, call, speech).run()

    # --- listings and probes -----------------------------------------------------------

    def _model_names(self) -> list[str]:
        return list(dict.fromkeys((self._layer.engine.info.model_name, *MODEL_ALIASES)))

    @staticmethod
    def _model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "bark-stream"}

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_object(n) for n in self._model_names()]})

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self._model_names():
            raise ApiError(404, f"model: {name[:60]!r} is not one of {', '.join(self._model_names())} (any name is "
                           "accepted by POST /v1/audio/speech)", param="model", code="model_not_found")
        return web.json_response(self._model_object(name))

    async def _voices(self, request: web.Request) -> web.Response:
        voices = [{"id": n, "name": n} for n in self._layer.voices.names]
        voices += [{"id": a, "name": a, "preset": p} for a, p in self._layer.aliases.items()]
        return web.json_response({"voices": voices})

    async def _audio_models(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"id": n} for n in self._model_names()]})
