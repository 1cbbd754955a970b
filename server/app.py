"""The server: WebSocket sessions on `/v1/stream`, plain HTTP `/healthz` and `/metrics` on the same port.

    engine = create_engine(config); engine.start()      # blocking: load + warm-up
    async with BarkServer(engine, config) as server:    # the port opens here
        print(server.port); await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from streaming.bundle import load_engine
from streaming.engine import Engine, EngineConfig
from streaming.voices import list_presets

from .config import ServerConfig
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .protocol import PATH, encode_server_message, ready_message
from .session import ServerContext, Session

log = logging.getLogger(__name__)


def create_engine(config: ServerConfig) -> Engine:
    """Load the models, codec, tokenizer and voices the config names (blocking; not started)."""
    return load_engine(
        model=config.model,
        device=config.device,
        dtype=config.dtype,
        codec=config.codec,
        tokenizer=config.tokenizer,
        voices_dir=config.voices_dir,
        local_files_only=config.offline,
        config=EngineConfig(max_streams=config.max_streams, max_queue=config.max_queue),
    )


def voice_names(config: ServerConfig) -> list[str]:
    """Voices announced in `ready`: the .npz files of the voices dir, then the standard presets."""
    local: list[str] = []
    if config.voices_dir is not None:
        root = Path(config.voices_dir)
        local = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.npz"))
    presets = [] if config.offline and config.voices_dir is not None else list_presets()
    return list(dict.fromkeys(local + presets))


def _json_response(connection: ServerConnection, status: int, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class BarkServer:
    """Serves an already started engine; `async with` opens and closes the listening socket."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServerMetrics()
        ready = ready_message(
            engine.model_name, voice_names(config), config.limits,
            extra_limits={"max_streams": config.max_streams, "max_queue": config.max_queue},
        )
        self._ctx = ServerContext(engine, config, self.metrics, encode_server_message(ready))
        self._ids = itertools.count(1)
        self._server: Server | None = None
        self._sessions: dict[Session, asyncio.Task[None]] = {}  # open sessions -> their handler tasks

    @property
    def port(self) -> int:
        """The TCP port listened on (useful with port 0)."""
        assert self._server is not None, "BarkServer.port: the server is not started"
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> None:
        """Open the listening socket."""
        cfg = self.config
        self._server = await serve(
            self._handle, cfg.host, cfg.port, process_request=self._process_request,
            max_size=cfg.ws_max_size, compression=None, ping_interval=cfg.ping_interval,
            close_timeout=cfg.close_timeout,
        )
        log.info("listening on ws://%s:%d%s (model %s)", cfg.host, self.port, PATH, self.engine.model_name)

    async def close(self) -> None:
        """Send `shutting_down` to every connection, close them (1001) and stop listening; safe to call twice."""
        if self._server is None:
            return
        for session in self._sessions:
            session.shutdown()
        if self._sessions:
            await asyncio.wait(self._sessions.values(), timeout=self.config.close_timeout)
        self._server.close()
        await self._server.wait_closed()
        log.info("server closed")

    async def serve_forever(self) -> None:
        assert self._server is not None, "BarkServer.serve_forever: call start() first"
        await self._server.serve_forever()

    async def __aenter__(self) -> BarkServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- HTTP ----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer /healthz and /metrics; let /v1/stream upgrade (503 when full); 404 elsewhere."""
        path = urlsplit(request.path).path
        if path == PATH:
            if self.metrics.connections >= self.config.max_connections:
                log.warning("refused a connection: %d open (max_connections)", self.metrics.connections)
                return connection.respond(503, f"too many connections (max {self.config.max_connections})\n")
            return None
        if path == "/healthz":
            return self._healthz(connection)
        if path == "/metrics":
            response = connection.respond(200, self._render_metrics())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
            return response
        return connection.respond(404, f"not found: {path[:100]} (try {PATH}, /healthz or /metrics)\n")

    def _healthz(self, connection: ServerConnection) -> Response:
        if not self.engine.healthy:
            return _json_response(connection, 503, {"status": "unhealthy", "model": self.engine.model_name})
        snap = self.engine.snapshot()
        return _json_response(connection, 200, {"status": "ok", "model": self.engine.model_name,
                                                "active_streams": snap.active})

    def _render_metrics(self) -> str:
        snap = self.engine.snapshot()
        return self.metrics.render(active_streams=snap.active, queue_depth=snap.queued,
                                   healthy=self.engine.healthy)

    # --- WebSocket -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One connection: run its session; an unexpected failure is logged and closes with 1011."""
        conn_id = f"c{next(self._ids)}"
        self.metrics.connections += 1
        log.info("conn %s: open from %s (%d open)", conn_id, ws.remote_address, self.metrics.connections)
        session = Session(ws, self._ctx, conn_id)
        self._sessions[session] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await session.run()
        except Exception:
            log.exception("conn %s: session failed", conn_id)
            await ws.close(1011, "internal error")
        finally:
            del self._sessions[session]
            self.metrics.connections -= 1
            log.info("conn %s: closed (code %s, %d open)", conn_id, ws.close_code, self.metrics.connections)
