"""`WyomingServer`: the Wyoming TCP listener on `--wyoming-port`, its connections and its lifecycle.

    wyoming = WyomingServer(layer)        # the request layer every front end shares (engine, voices, metrics)
    await wyoming.start()                 # listens on config.wyoming_host:wyoming_port (+ zeroconf if asked)
    wyoming.drain(); await wyoming.close()

Every Wyoming request is an engine request like a WebSocket one: same engine slots and queue
(`overloaded` when full), same per-connection slot share, same text limits, same
request/audio/timing metrics. `max_connections` caps Wyoming connections too (counted
apart from WebSocket ones). Every request uses the sampling parameters of
`--wyoming-params` (the WebSocket's `params` map, as JSON), since Wyoming carries none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
from typing import Any

from wyoming.error import Error
from wyoming.event import async_write_event

from protocol import parse_params
from streaming.errors import ConfigError

from ..netutil import LOOPBACK_HOSTS, is_loopback  # noqa: F401 (LOOPBACK_HOSTS re-exported)
from ..requests import RequestLayer
from .events import info_event
from .session import WyomingSession, linger

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."


class WyomingServer:
    """Wyoming text to speech over the server's engine; `start()` listens, `drain()` and `close()` stop it."""

    def __init__(self, layer: RequestLayer) -> None:
        cfg = layer.config
        self.layer = layer
        self.sampling, self.policy = parse_params(dict(cfg.wyoming_params) or None)  # checked by ServerConfig
        self.info = info_event(layer.engine.info.model_name, layer.voices.names, cfg.default_voice)
        # one event: a synthesize of max_request_chars characters, each at most 6 bytes as a JSON \\u escape
        self.max_event_bytes = 6 * cfg.limits.max_request_chars + 16_384
        self.draining = False
        self._server: asyncio.Server | None = None
        self._sessions: dict[WyomingSession, asyncio.Task[Any]] = {}
        self._ids = itertools.count(1)
        self._zeroconf: Any = None  # (AsyncZeroconf, AsyncServiceInfo) while announced
        if cfg.wyoming_zeroconf is not None:
            try:
                import zeroconf  # noqa: F401 - checked before the port opens
            except ImportError:
                raise ConfigError("--wyoming-zeroconf needs the zeroconf package: pip install "
                                  "'bark-stream[zeroconf]'") from None

    @property
    def port(self) -> int:
        assert self._server is not None, "WyomingServer.port: not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def busy(self) -> bool:
        """True while a Wyoming request is in flight."""
        return any(s.busy for s in self._sessions)

    async def start(self) -> None:
        cfg = self.layer.config
        assert cfg.wyoming_port is not None
        self._server = await asyncio.start_server(self._accept, cfg.wyoming_host, cfg.wyoming_port,
                                                  limit=self.max_event_bytes)
        if cfg.wyoming_zeroconf is not None:
            await self._announce(cfg.wyoming_zeroconf)
        log.info("Wyoming text to speech on tcp://%s:%d (%d Hz s16 mono, %d voice(s)%s)", cfg.wyoming_host, self.port,
                 cfg.wyoming_sample_rate, len(self.layer.voices.names) + 1,
                 "" if is_loopback(cfg.wyoming_host) else "; Wyoming has no authentication: firewall this port")

    def drain(self) -> None:
        """New requests are refused with `shutting_down`; those in flight go on."""
        self.draining = True

    async def close(self) -> None:
        """Withdraw the announcement, stop listening, cut every connection (in-flight requests are cancelled)."""
        if self._zeroconf is not None:
            zc, service = self._zeroconf
            self._zeroconf = None
            try:
                await zc.async_unregister_service(service)
            finally:
                await zc.async_close()
        if self._server is None:
            return
        self._server.close()
        await asyncio.gather(*(s.shutdown("shutting_down", "the server is stopping; retry later")
                               for s in list(self._sessions)), return_exceptions=True)
        if self._sessions:
            await asyncio.wait(list(self._sessions.values()), timeout=self.layer.config.close_timeout)
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.layer.config
        conn_id = f"wy{next(self._ids)}"
        refusal = None
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        counted = False
        if self.draining:
            refusal = ("shutting_down", "the server is stopping; retry later")
        elif len(self._sessions) >= cfg.max_connections:
            refusal = ("overloaded", f"too many Wyoming connections (max {cfg.max_connections}); retry later")
        elif not self.layer.admission.connect(address):
            refusal = ("rate_limited", f"your address has {cfg.max_connections_per_ip} open connections "
                       "(--max-connections-per-ip, every protocol counted); close one")
        else:
            counted = True
        if refusal is not None:
            self.layer.metrics.error(refusal[0])
            log.warning("wyoming %s: refused a connection: %s", conn_id, refusal[1])
            try:
                await asyncio.wait_for(async_write_event(Error(text=refusal[1], code=refusal[0]).event(), writer),
                                       cfg.close_timeout)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
            await linger(reader, writer)  # closing on unread input would reset before the peer read the error
            writer.close()
            return
        session = WyomingSession(reader, writer, self, conn_id, address)
        task = asyncio.current_task()
        assert task is not None
        self._sessions[session] = task
        log.info("wyoming %s: open from %s", conn_id, writer.get_extra_info("peername"))
        try:
            await session.run()
        except Exception:  # noqa: BLE001 - one connection's bug must not take the listener down
            log.exception("wyoming %s: session failed", conn_id)
            writer.transport.abort()
        finally:
            del self._sessions[session]
            if counted:
                self.layer.admission.disconnect(address)
            log.info("wyoming %s: closed", conn_id)

    async def _announce(self, name: str) -> None:
        """Register `<name>._wyoming._tcp.local.` (Home Assistant discovers it and offers to add it)."""
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        host = self.layer.config.wyoming_host
        address = host if _is_concrete(host) else _outbound_address()
        hostname = socket.gethostname().split(".")[0] or "bark-stream"
        service_name = name or f"bark-stream-{hostname}"
        info = AsyncServiceInfo(SERVICE_TYPE, f"{service_name}.{SERVICE_TYPE}", server=f"{hostname}.local.",
                                addresses=[ipaddress.ip_address(address).packed], port=self.port,
                                properties={"model": self.layer.engine.info.model_name})
        zc = AsyncZeroconf()
        await zc.async_register_service(info)
        self._zeroconf = (zc, info)
        log.info("zeroconf: announced %s.%s at %s:%d", service_name, SERVICE_TYPE, address, self.port)


def _is_concrete(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _outbound_address() -> str:
    """This machine's address on its default route (a UDP socket's connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("224.0.0.251", 5353))  # the mDNS group: the interface mDNS will announce on
        return str(sock.getsockname()[0])
