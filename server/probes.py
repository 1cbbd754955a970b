"""`/healthz` and `/metrics`: one answer, whichever port is asked.

    probes = Probes(health, render_metrics)       # the server's two callables
    status, headers, body = probes.answer("/healthz")
    probes.aiohttp_routes(app)                    # the HTTP API's port and the metrics port serve it so
    site = await probes.listen(host, port, limiter)   # --metrics-port: /metrics and /healthz only, no key

The WebSocket port answers the same `answer()` through its handshake hook. The
metrics port exists so that /metrics can stay private without a key: bind it to
loopback or an internal interface (`--metrics-host`) and scrape it there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .limits import AddressBuckets
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # Retry-After on an unhealthy /healthz
PATHS = ("/healthz", "/metrics")


class Probes:
    """The health and metrics answers as (status, headers, body), for any HTTP stack to send."""

    def __init__(self, health: Callable[[], tuple[int, dict[str, Any]]], render_metrics: Callable[[], str]) -> None:
        self._health = health
        self._render_metrics = render_metrics

    def answer(self, path: str) -> tuple[int, dict[str, str], str]:
        if path == "/healthz":
            status, body = self._health()
            headers = {"Content-Type": "application/json"}
            if status != 200:
                headers["Retry-After"] = str(RETRY_AFTER_S)
            return status, headers, json.dumps(body) + "\n"
        if path == "/metrics":
            return 200, {"Content-Type": METRICS_CONTENT_TYPE}, self._render_metrics()
        raise ValueError(f"path: {path!r} is not one of {', '.join(PATHS)}")

    async def _handle(self, request: web.Request) -> web.Response:
        status, headers, body = self.answer(request.path)
        response = web.Response(status=status, text=body)
        for name, value in headers.items():
            response.headers[name] = value
        return response

    def aiohttp_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._handle, name="healthz")
        app.router.add_get("/metrics", self._handle, name="metrics")

    async def listen(self, host: str, port: int, limiter: AddressBuckets) -> web.AppRunner:
        """The metrics port: /metrics and /healthz without a key, each request through the address limiter."""
        @web.middleware
        async def limit(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if not limiter.take(request.remote or "", time.monotonic()):
                return web.Response(status=429, text="too many requests\n", headers={"Retry-After": "1"})
            return await handler(request)

        app = web.Application(middlewares=[limit])
        self.aiohttp_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics and health on http://%s:%d/metrics (no key: keep this address private)", host,
                 int(runner.addresses[0][1]))
        return runner
