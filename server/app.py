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
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.protocol import State

from streaming.bundle import load_engine
from streaming.threads import serial_main_thread
from streaming.engine import Engine, EngineConfig

from .auth import SERVER_LOGGERS, KeySet, RateLimitedWarning, client_address, origin_allowed, secret_free_logger
from .guard import ReadBudget, guarded_connection
from .config import ServerConfig
from .context import ServerContext
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from protocol import PATH, ProtocolError, encode_server_message, ready_message
from .voices import VoiceCatalog, active_aliases
from .session import Session
from .httpapi import HttpApi
from .web import WebPage
from .wyoming import WyomingServer

log = logging.getLogger(__name__)

ENGINE_POLL_S = 0.2  # how often the watcher checks that the engine thread is alive
RETRY_AFTER_S = 5  # Retry-After (seconds) on 503 answers


def create_engine(config: ServerConfig) -> Engine:
    """Load the models, codec, tokenizer and voices the config names (blocking; not started)."""
    serial_main_thread()  # this loading thread must not keep an OpenMP pool that competes with the engine's
    return load_engine(
        model=config.model,
        device=config.device,
        dtype=config.dtype,
        codec=config.codec,
        codec_dtype=config.codec_dtype,
        quantize=config.quantize,
        tokenizer=config.tokenizer,
        voices_dir=config.voices_dir,
        local_files_only=config.offline,
        config=EngineConfig(max_streams=config.max_streams, max_queue=config.max_queue,
                            max_streams_per_owner=config.streams_per_connection, cuda_graphs=config.cuda_graphs,
                            coarse_prefix_slots=config.coarse_prefix_slots),
    )


def _json_response(connection: ServerConnection, status: int, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def _refusal(connection: ServerConnection, status: int, text: str, **headers: str) -> Response:
    response = connection.respond(status, text + "\n")
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


class BarkServer:
    """Serves an already started engine; `async with` opens and closes the listening socket."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics()
        voices = VoiceCatalog(config.voices_dir, config.offline)
        voices.discover()  # blocking, before the port opens: ready.voices lists only what loads now
        aliases = active_aliases(config.voice_aliases, voices.names)
        ready = ready_message(
            engine.model_name, voices.names, config.limits,
            extra_limits={"max_streams": config.max_streams, "max_queue": config.max_queue,
                          "max_messages_per_s": int(config.max_messages_per_s),
                          "max_buffer_ms": int(config.max_buffer_s * 1000)},
            voice_aliases=aliases,
        )
        self._ctx = ServerContext(engine, config, self.metrics, encode_server_message(ready), voices,
                                  aliases=aliases)
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
            self._http = HttpApi(self._ctx, self._keys, health=self.health, render_metrics=self._render_metrics)
            try:
                await self._http.start(cfg.host, cfg.http_port, ssl_context=tls)
            except BaseException:
                await self._http.close()
                self._http = None
                self._server.close()
                await self._server.wait_closed()
                raise
        if cfg.wyoming_port is not None:
            self._wyoming = WyomingServer(self._ctx)
            try:
                await self._wyoming.start()
            except BaseException:
                self._wyoming = None
                await self.close()
                raise
        self._watcher = asyncio.create_task(self._watch_engine(), name="engine watcher")
        log.info("listening on %s://%s:%d%s (model %s, %s)", "ws" if tls is None else "wss", cfg.host, self.port,
                 PATH, self.engine.model_name,
                 f"{len(cfg.api_keys)} API key(s)" if cfg.api_keys else "no authentication")

    async def drain(self, timeout: float) -> None:
        """Stop accepting connections and requests; let requests in flight finish for up to `timeout`
        seconds; then close every connection with 1012 (`shutting_down`). Call close() afterwards."""
        if self._server is None or self._draining:
            return
        self._draining = True  # new upgrades get 503 + Retry-After; /healthz says "draining" with 503
        for session in self._sessions:
            session.drain()
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
        await self._close_sessions(ProtocolError("shutting_down", "the server is restarting; reconnect later",
                                                 close_code=1012))

    def _busy(self) -> bool:
        return (any(s.busy for s in self._sessions) or (self._http is not None and self._http.busy)
                or (self._wyoming is not None and self._wyoming.busy))

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
        """Poll the engine thread; when it dies, close every connection with 1011 and set engine_failed."""
        while self.engine.healthy:
            await asyncio.sleep(ENGINE_POLL_S)  # a liveness poll: the engine has no death callback
        log.critical("engine thread died: closing %d connection(s) with 1011", len(self._sessions))
        self.engine_failed.set()
        await self._close_sessions(ProtocolError("internal", "the engine failed; the server will restart",
                                                 fatal=True, close_code=1011))

    # --- HTTP ----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer /healthz and /metrics; check key, origin and capacity before /v1/stream upgrades."""
        try:
            path = urlsplit(request.path).path
        except ValueError:  # e.g. "//[": not a URL at all
            self.metrics.refuse("bad_request")
            return _refusal(connection, 400, "malformed request target")
        if path == PATH:
            return self._admit(connection, request)
        if path == "/healthz":
            return self._healthz(connection)
        if path == "/metrics":
            if not self.config.public_metrics and not self._keys.allows(request):
                return self._unauthorised(connection, "/metrics")
            response = connection.respond(200, self._render_metrics())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
            return response
        page = self._web.respond(connection, path) if self._web is not None else None
        if page is not None:
            return page
        return connection.respond(404, f"not found: {path[:100]} (try {PATH}, /healthz or /metrics)\n")

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        cfg = self.config
        if not self._keys.allows(request):
            return self._unauthorised(connection, PATH)
        if not origin_allowed(request, cfg.allowed_origins):
            self.metrics.refuse("origin")
            log.warning("refused a connection from %s: origin not allowed", connection.remote_address)
            return _refusal(connection, 403, "origin not allowed")
        if self._draining or self.engine_failed.is_set():
            self.metrics.refuse("unavailable")
            return _refusal(connection, 503, "the server is stopping", Retry_After=str(RETRY_AFTER_S))
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        for gone in [c for c in self._address if c not in self._admitted]:
            self._address.pop(gone, None)
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
        address = client_address(str(connection.remote_address[0]) if connection.remote_address else "",
                                  request.headers.get_all("X-Forwarded-For"), cfg.trusted_proxies)
        if cfg.max_connections_per_ip is not None:
            open_here = sum(1 for a in self._address.values() if a == address)
            if open_here >= cfg.max_connections_per_ip:
                self.metrics.refuse("per_ip")
                return _refusal(connection, 429, f"too many connections from your address (max "
                                f"{cfg.max_connections_per_ip})", Retry_After=str(RETRY_AFTER_S))
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
        snap = self.engine.snapshot()
        return snap.active + snap.queued >= self.config.max_streams

    def _full(self) -> bool:
        """A new stream would not be accepted now. With refuse_when_full: every engine slot is taken (upgrades
        get 503). Without: the admission queue is full too (requests get `overloaded`). Either way also when
        max_connections are open."""
        cfg = self.config
        snap = self.engine.snapshot()
        slots = cfg.max_streams + (0 if cfg.refuse_when_full else cfg.max_queue)
        open_now = sum(1 for c in self._admitted if c.state is not State.CLOSED)
        return snap.active + snap.queued >= slots or open_now >= cfg.max_connections

    def health(self) -> tuple[int, dict[str, Any]]:
        """One JSON shape: {"status": ok|unavailable, "reason": null|draining|full|engine_failed, "model",
        "active_streams", "queued_streams", "max_streams", "connections", "max_connections"}; 200 only when
        new streams are accepted (balancers route on the status code; the rest is for sizing)."""
        snap = self.engine.snapshot()
        reason = ("engine_failed" if not self.engine.healthy else "draining" if self._draining
                  else "full" if self._full() else None)
        body = {"status": "ok" if reason is None else "unavailable", "reason": reason,
                "model": self.engine.model_name, "active_streams": snap.active, "queued_streams": snap.queued,
                "max_streams": self.config.max_streams, "connections": self.metrics.connections,
                "max_connections": self.config.max_connections}
        return (200 if reason is None else 503), body

    def _healthz(self, connection: ServerConnection) -> Response:
        status, body = self.health()
        response = _json_response(connection, status, body)
        if status != 200:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def _render_metrics(self) -> str:
        snap = self.engine.snapshot()
        owed = sum(s.ledger.owed_s for s in self._sessions)
        return self.metrics.render(active_streams=snap.active, queue_depth=snap.queued,
                                   healthy=self.engine.healthy, paused_streams=snap.paused, owed_audio_s=owed)

    # --- WebSocket -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One connection: run its session; an unexpected failure is logged and closes with 1011."""
        conn_id = f"c{next(self._ids)}"
        self.metrics.connection_opened()
        log.info("conn %s: open from %s (%d open)", conn_id, self._address.get(ws, ws.remote_address),
                 self.metrics.connections)
        session = Session(ws, self._ctx, conn_id, key=self._key_of.get(ws))
        self._sessions[session] = asyncio.current_task()  # type: ignore[assignment]
        if self._draining:
            session.drain()
        try:
            await session.run()
        except Exception:
            log.exception("conn %s: session failed", conn_id)
            await ws.close(1011, "internal error")
        finally:
            del self._sessions[session]
            self._admitted.discard(ws)
            self._address.pop(ws, None)
            self._key_of.pop(ws, None)
            self.metrics.connection_closed()
            log.info("conn %s: closed (code %s, %d open)", conn_id, ws.close_code, self.metrics.connections)
