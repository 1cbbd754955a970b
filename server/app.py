"""The server: WebSocket sessions on `/v1/stream`, plain HTTP `/healthz` and `/metrics` on the same port,
and, with `http_port`, the OpenAI-compatible HTTP API (server/httpapi) on its own port, same event loop.

    engine = create_engine(config); engine.start()      # blocking: load + warm-up
    async with BarkServer(engine, config) as server:    # the port opens here
        print(server.port); await server.serve_forever()
        await server.drain(30.0)                        # graceful stop: finish what is in flight

Before an upgrade the server checks, in order: the path, the API key (401), the
Origin (403), draining and `max_connections` (503 with Retry-After). A watcher
task turns `/healthz` unhealthy and closes every connection with 1011 if the
engine thread dies; `engine_failed` tells `python -m server` to exit non-zero.
"""

from __future__ import annotations

import asyncio
import time
import itertools
import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from .auth import SERVER_LOGGERS, KeySet, RateLimitedWarning, client_address, origin_allowed, secret_free_logger
from .guard import ReadBudget, guarded_connection
from .config import ServerConfig
from .enginelink import EngineLink, LocalEngine
from .metrics import ServerMetrics
from .probes import PATHS as PROBE_PATHS
from .probes import Probes
from protocol import PATH, ProtocolError, encode_server_message, ready_message
from streaming.errors import ErrorCode
from .requests import RequestLayer
from .voices import VoiceCatalog, active_aliases
from .session import Session
from .httpapi import HttpApi
from .web import WebPage
from .wyoming import WyomingServer

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # Retry-After (seconds) on 503 answers


def engine_load_spec(config: ServerConfig) -> dict[str, Any]:
    """What to load, as plain values: `load_engine`'s arguments plus `engine_config` (EngineConfig's fields).
    The same spec loads the engine in this process (`create_engine`) or in the engine process."""
    return dict(
        model=config.model, device=config.device, dtype=config.dtype, codec=config.codec,
        codec_dtype=config.codec_dtype, quantize=config.quantize, tokenizer=config.tokenizer,
        voices_dir=None if config.voices_dir is None else str(config.voices_dir), local_files_only=config.offline,
        engine_config=dict(max_streams=config.max_streams, max_queue=config.max_queue,
                           max_streams_per_owner=config.streams_per_connection, cuda_graphs=config.cuda_graphs,
                           coarse_prefix_slots=config.coarse_prefix_slots),
    )


def create_engine(config: ServerConfig):  # type: ignore[no-untyped-def] - an Engine (imports torch)
    """Load the models, codec, tokenizer and voices the config names, in this process (blocking; not started)."""
    from streaming.bundle import load_engine
    from streaming.engine import EngineConfig
    from streaming.threads import serial_main_thread

    serial_main_thread()  # this loading thread must not keep an OpenMP pool that competes with the engine's
    spec = engine_load_spec(config)
    engine_config = EngineConfig(**spec.pop("engine_config"))
    return load_engine(**spec, config=engine_config)


async def start_engine(config: ServerConfig) -> EngineLink:
    """The engine the config asks for, loaded and warmed up: its own process (engine_mode "process", the
    default) or a thread of this one ("thread"). Raises what loading raises (WeightsError, ConfigError, ...)."""
    if config.engine_mode == "process":
        from .enginelink.process import EngineProcess

        return await EngineProcess.start(engine_load_spec(config))
    engine = await asyncio.to_thread(create_engine, config)
    await asyncio.to_thread(engine.start)
    return LocalEngine(engine)


def _refusal(connection: ServerConnection, status: int, text: str, **headers: str) -> Response:
    response = connection.respond(status, text + "\n")
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


class BarkServer:
    """Serves an already started engine; `async with` opens and closes the listening socket."""

    def __init__(self, engine: EngineLink | Any, config: ServerConfig) -> None:
        self.engine = engine  # as given: an EngineLink, or a started streaming.engine.Engine (tests, embedding)
        self.link: EngineLink = engine if hasattr(engine, "info") else LocalEngine(engine)
        self.config = config
        self.metrics = ServerMetrics()
        voices = VoiceCatalog(config.voices_dir, config.offline)
        voices.discover()  # blocking, before the port opens: ready.voices lists only what loads now
        aliases = active_aliases(config.voice_aliases, voices.names)
        ready = ready_message(
            self.link.info.model_name, voices.names, config.limits,
            extra_limits={"max_streams": config.max_streams, "max_queue": config.max_queue,
                          "max_messages_per_s": int(config.max_messages_per_s),
                          "max_buffer_ms": int(config.max_buffer_s * 1000)},
            voice_aliases=aliases,
        )
        self._ready_frame = encode_server_message(ready)  # encoded once
        self.layer = RequestLayer(self.link, config, self.metrics, voices, aliases)
        self.probes = Probes(self.health, self._render_metrics)  # /healthz and /metrics, whichever port
        self._probe_site: web.AppRunner | None = None  # --metrics-port
        self._keys = KeySet(config.api_keys)
        self._http: HttpApi | None = None
        self._wyoming: WyomingServer | None = None  # Home Assistant's Wyoming TTS, with --wyoming-port
        self._web = WebPage() if config.web_page else None  # the try-it page at /
        self._auth_warning = RateLimitedWarning(log)
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._sessions: dict[Session, asyncio.Task[None]] = {}  # open sessions -> their handler tasks
        self._admitted: set[ServerConnection] = set()  # upgrades let through, not yet closed
        self._address: dict[ServerConnection, str] = {}  # real client address of each admitted upgrade
        self._key_of: dict[ServerConnection, int | None] = {}  # which API key each admitted upgrade used
        self._draining = False
        self._watcher: asyncio.Task[None] | None = None
        self.engine_failed = asyncio.Event()  # set once the engine thread has died

    @property
    def port(self) -> int:
        """The TCP port listened on (useful with port 0)."""
        assert self._server is not None, "BarkServer.port: the server is not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def http_port(self) -> int | None:
        """The HTTP API's TCP port (None when --http-port was not given)."""
        return self._http.port if self._http is not None else None

    @property
    def metrics_port(self) -> int | None:
        """The metrics listener's TCP port (None without --metrics-port)."""
        return int(self._probe_site.addresses[0][1]) if self._probe_site is not None else None

    @property
    def wyoming_port(self) -> int | None:
        """The Wyoming server's TCP port (None when --wyoming-port was not given)."""
        return self._wyoming.port if self._wyoming is not None else None

    async def start(self) -> None:
        """Open the listening sockets (WebSocket, and the HTTP API if configured) and watch the engine."""
        cfg = self.config
        tls = cfg.ssl_context()  # None without --ssl-certfile
        self._server = await serve(
            self._handle, cfg.host, cfg.port, process_request=self._process_request, ssl=tls,
            max_size=cfg.ws_max_size, compression="deflate" if cfg.compression else None,
            ping_interval=None,  # the session watchdog pings: keepalive and audio acknowledgement in one
            open_timeout=cfg.open_timeout, close_timeout=cfg.close_timeout, logger=secret_free_logger(),
            create_connection=guarded_connection(ReadBudget(
                cfg.max_bytes_per_s, max(cfg.max_bytes_per_s, 4.0 * cfg.ws_max_size), cfg.max_frames_per_s,
                cfg.frame_burst, on_throttle=self._throttled)),
        )
        for name in SERVER_LOGGERS:  # keys redacted and control characters escaped in every server log line
            secret_free_logger(name)
        if cfg.http_port is not None:
            self._http = HttpApi(self.layer, self._keys, self.probes)
            try:
                await self._http.start(cfg.host, cfg.http_port, ssl_context=tls)
            except BaseException:
                await self._http.close()
                self._http = None
                self._server.close()
                await self._server.wait_closed()
                raise
        if cfg.wyoming_port is not None:
            self._wyoming = WyomingServer(self.layer)
            try:
                await self._wyoming.start()
            except BaseException:
                self._wyoming = None
                await self.close()
                raise
        if cfg.metrics_port is not None:
            self._probe_site = await self.probes.listen(cfg.metrics_host, cfg.metrics_port,
                                                        self.layer.admission.http)
        self._watcher = asyncio.create_task(self._watch_engine(), name="engine watcher")
        log.info("listening on %s://%s:%d%s (model %s, %s)", "ws" if tls is None else "wss", cfg.host, self.port,
                 PATH, self.link.info.model_name,
                 f"{len(cfg.api_keys)} API key(s)" if cfg.api_keys else "no authentication")

    async def drain(self, timeout: float) -> None:
        """Stop accepting connections and requests; let requests in flight finish for up to `timeout`
        seconds; then close every connection with 1012 (`shutting_down`). Call close() afterwards."""
        if self._server is None or self._draining:
            return
        self._draining = True  # new upgrades get 503 + Retry-After; /healthz says "draining" with 503
        self.layer.drain()
        if self._http is not None:
            self._http.drain()
        if self._wyoming is not None:
            self._wyoming.drain()
        busy = sum(s.busy for s in self._sessions)
        log.info("draining: %d connection(s), %d with requests in flight, %d HTTP request(s), deadline %.1f s",
                 len(self._sessions), busy, self.metrics.http_in_flight, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)  # bounded by the drain deadline
        left = [s for s in self._sessions if s.busy]
        if left:
            log.warning("drain deadline reached: closing %d connection(s) with requests in flight", len(left))
        await self._close_sessions(ProtocolError(ErrorCode.SHUTTING_DOWN, "the server is restarting; reconnect later",
                                                 close_code=1012))

    def _busy(self) -> bool:
        return self.layer.busy

    async def close(self) -> None:
        """Send `shutting_down` to every connection, close them (1001) and stop listening; safe to call twice."""
        if self._server is None:
            return
        if self._http is not None:  # HTTP answers in flight are cut (their engine streams cancelled)
            await self._http.close()
            self._http = None
        if self._wyoming is not None:  # Wyoming requests in flight are cut too
            await self._wyoming.close()
            self._wyoming = None
        await self._close_sessions(None)
        await self.layer.close()
        if self._probe_site is not None:
            await self._probe_site.cleanup()
            self._probe_site = None
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        self._server.close()
        await self._server.wait_closed()
        log.info("server closed")

    async def _close_sessions(self, exc: ProtocolError | None) -> None:
        for session in list(self._sessions):
            session.shutdown(exc)
        if self._sessions:
            await asyncio.wait(list(self._sessions.values()), timeout=self.config.close_timeout)

    async def serve_forever(self) -> None:
        assert self._server is not None, "BarkServer.serve_forever: call start() first"
        await self._server.serve_forever()

    async def __aenter__(self) -> BarkServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _watch_engine(self) -> None:
        """Wait for the engine's death; then close every connection with 1011 and set engine_failed (its
        requests in flight have each had `error` internal and `done` from the engine link)."""
        await self.link.wait_failed()
        log.critical("the engine died: closing %d connection(s) with 1011", len(self._sessions))
        self.engine_failed.set()
        await self._close_sessions(ProtocolError(ErrorCode.INTERNAL, "the engine failed; the server will restart",
                                                 fatal=True, close_code=1011))

    # --- HTTP ----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every request passes the per-address limiter first; then answer /healthz and /metrics, and check
        key, origin and capacity before /v1/stream upgrades."""
        address = self._client_address(connection, request)
        if not self.layer.admission.http_request(address, time.monotonic()):
            self.metrics.refuse("http_rate")
            return _refusal(connection, 429, f"more than {self.config.http_limit_per_s:g} HTTP requests per second "
                            "from your address; slow down", Retry_After="1")
        try:
            path = urlsplit(request.path).path
        except ValueError:  # e.g. "//[": not a URL at all
            self.metrics.refuse("bad_request")
            return _refusal(connection, 400, "malformed request target")
        if path == PATH:
            return self._admit(connection, request, address)
        if path == "/metrics" and not self.config.public_metrics and not self._keys.allows(request):
            return self._unauthorised(connection, "/metrics")
        if path in PROBE_PATHS:
            status, headers, body = self.probes.answer(path)
            response = connection.respond(status, body)
            del response.headers["Content-Type"]
            for name, value in headers.items():
                response.headers[name] = value
            return response
        page = self._web.respond(connection, path) if self._web is not None else None
        if page is not None:
            return page
        return connection.respond(404, f"not found: {path[:100]} (try {PATH}, /healthz or /metrics)\n")

    def _client_address(self, connection: ServerConnection, request: Request) -> str:
        """The real client: the peer, or what a trusted proxy's X-Forwarded-For names."""
        peer = str(connection.remote_address[0]) if connection.remote_address else ""
        return client_address(peer, request.headers.get_all("X-Forwarded-For"), self.config.trusted_proxies)

    def _admit(self, connection: ServerConnection, request: Request, address: str) -> Response | None:
        cfg = self.config
        if not self._keys.allows(request):
            return self._unauthorised(connection, PATH)
        if not origin_allowed(request, cfg.allowed_origins):
            self.metrics.refuse("origin")
            log.warning("refused a connection from %s: origin not allowed", connection.remote_address)
            return _refusal(connection, 403, "origin not allowed")
        if self._draining or not self.link.healthy:
            self.metrics.refuse("unavailable")
            return _refusal(connection, 503, "the server is stopping", Retry_After=str(RETRY_AFTER_S))
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        for gone in [c for c in self._address if c not in self._admitted]:
            self.layer.admission.disconnect(self._address.pop(gone))
            self._key_of.pop(gone, None)
        if cfg.refuse_when_full and self._engine_full():
            self.metrics.refuse("full")  # a balancer (HAProxy `retry-on 503`) or the client tries another replica
            return _refusal(connection, 503, f"every engine slot is in use (max_streams {cfg.max_streams}); try "
                            "another replica", Retry_After=str(RETRY_AFTER_S))
        if len(self._admitted) >= cfg.max_connections:
            self.metrics.refuse("max_connections")
            log.warning("refused a connection: %d open (max_connections)", len(self._admitted))
            return _refusal(connection, 503, f"too many connections (max {cfg.max_connections})",
                            Retry_After=str(RETRY_AFTER_S))
        if not self.layer.admission.connect(address):
            self.metrics.refuse("per_ip")
            return _refusal(connection, 429, f"too many connections from your address (max "
                            f"{cfg.max_connections_per_ip}, every protocol counted)", Retry_After=str(RETRY_AFTER_S))
        self._admitted.add(connection)
        self._address[connection] = address
        self._key_of[connection] = self._keys.which(request) if self._keys else None
        return None

    def _throttled(self, what: str) -> None:
        self.metrics.throttle(what)

    def _unauthorised(self, connection: ServerConnection, what: str) -> Response:
        self.metrics.refuse("auth")  # every refusal is counted; the log says so at most every 10 s
        self._auth_warning(time.monotonic(), "refused %s from %s: missing or unknown API key", what,
                           connection.remote_address)
        return _refusal(connection, 401, "missing or unknown API key (Authorization: Bearer, X-API-Key "
                        "or ?token=)", WWW_Authenticate='Bearer realm="bark-stream"')

    def _engine_full(self) -> bool:
        """No engine slot free for a new stream: every one held, or queued for."""
        snap = self.link.snapshot()
        return snap.active + snap.queued >= self.config.max_streams

    def health(self) -> tuple[int, dict[str, Any]]:
        """/healthz on every port: the request layer's answer (200 only while new streams are accepted)."""
        open_now = sum(1 for c in self._admitted if c.state is not State.CLOSED)
        return self.layer.health(connections=self.metrics.connections,
                                 connections_full=open_now >= self.config.max_connections)

    def _render_metrics(self) -> str:
        snap = self.link.snapshot()
        return self.metrics.render(active_streams=snap.active, queue_depth=snap.queued, healthy=self.link.healthy,
                                   paused_streams=snap.paused, owed_audio_s=self.layer.owed_audio_s)

    # --- WebSocket -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One connection: run its session; an unexpected failure is logged and closes with 1011."""
        conn_id = f"c{next(self._ids)}"
        self.metrics.connection_opened()
        log.info("conn %s: open from %s (%d open)", conn_id, self._address.get(ws, ws.remote_address),
                 self.metrics.connections)
        session = Session(ws, self.layer, self._ready_frame, conn_id, address=self._address.get(ws, ""),
                          key=self._key_of.get(ws))
        self._sessions[session] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await session.run()
        except Exception:
            log.exception("conn %s: session failed", conn_id)
            await ws.close(1011, "internal error")
        finally:
            del self._sessions[session]
            self._admitted.discard(ws)
            if ws in self._address:
                self.layer.admission.disconnect(self._address.pop(ws))
            self._key_of.pop(ws, None)
            self.metrics.connection_closed()
            log.info("conn %s: closed (code %s, %d open)", conn_id, ws.close_code, self.metrics.connections)
