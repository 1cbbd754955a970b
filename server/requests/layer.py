"""The request layer: everything between a decoded request and its events, once for every front end.

    layer = RequestLayer(engine_link, config, metrics, voices, aliases)
    client = layer.client(conn_id="c7", address="10.0.0.9", key=0, owner="c7", on_fatal=close_connection)
    request = await client.open(RequestSpec(id="a", text="Hello."))   # ProtocolError: typed refusals
    async for event in request.events(): ...                          # Audio, Segment, Flushed, Done
    await client.close()                                               # the connection ended

A `Client` is one connection (or one HTTP call): its requests, its audio credit
(`AudioLedger`: audio handed out that the peer has not confirmed), and its share
of the caps that `Admission` counts across every door. One watcher per layer ends
the requests of a client that owes receipts for slow_consumer_timeout seconds
(`slow_consumer`) and tells its front end to drop the connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

from protocol import ProtocolError
from streaming.errors import EngineOverloaded, ErrorCode, TextError
from streaming.voices import Voice

from ..config import ServerConfig
from ..enginelink import EngineLink, EngineRequest, EngineStream
from ..flow import AudioLedger
from ..metrics import ServerMetrics
from ..voices import VoiceCatalog, VoiceUnavailable
from .admission import Admission
from .events import RequestSpec
from .request import Request

log = logging.getLogger(__name__)

_VOICE_NAME = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)?")  # names only: clients never pass paths
RETRY_AFTER_S = 5  # what `/healthz` and refusals of a stopping server suggest


class Client:
    """One connection's requests and credit; made by `RequestLayer.client`."""

    def __init__(self, layer: RequestLayer, conn_id: str, address: str, key: int | None, owner: str,
                 max_requests: int, on_fatal: Callable[[ProtocolError], None] | None) -> None:
        self.layer = layer
        self.conn_id = conn_id
        self.address = address
        self.key = key  # index of the API key the client authenticated with (per-key caps), None without keys
        self.owner = owner  # the engine shares its slots fairly between owners
        self.max_requests = max_requests
        self._on_fatal = on_fatal
        self.ledger = AudioLedger(layer.config.max_buffer_s)
        self.requests: dict[str, Request] = {}
        self.closed = False

    @property
    def busy(self) -> bool:
        return bool(self.requests)

    def get(self, req_id: str) -> Request | None:
        return self.requests.get(req_id)

    async def open(self, spec: RequestSpec) -> Request:
        """Admit, resolve the voice, submit: the request in flight, or a ProtocolError saying why not."""
        layer = self.layer
        layer.check_open(spec.id)
        if spec.id in self.requests:
            raise ProtocolError(ErrorCode.DUPLICATE_ID, f"id: {spec.id!r} is already in flight on this connection",
                                id=spec.id)
        if len(self.requests) >= self.max_requests:
            raise ProtocolError(ErrorCode.TOO_MANY_IDS, f"id: {spec.id!r} would be request {len(self.requests) + 1} in "
                                f"flight; max_ids_in_flight is {self.max_requests}", id=spec.id)
        layer.admission.admit(self.address, self.key, spec.id)
        try:
            voice = await layer.resolve_voice(spec.voice, spec.id)
            stream = await self._submit(spec, voice)
        except BaseException:
            layer.admission.release(self.address, self.key)
            raise
        if self.closed:  # the connection went away while the text was being prepared
            stream.cancel()
            layer.admission.release(self.address, self.key)
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the connection closed", id=spec.id, fatal=False)
        request = Request(self, spec, stream)
        self.requests[spec.id] = request
        layer.metrics.request_started()
        log.info("conn %s: request %s accepted (%s, voice %s, %s at %d Hz)", self.conn_id, spec.id,
                 "whole text" if spec.text is not None else "text follows", spec.voice or layer.config.default_voice,
                 spec.encoding, spec.sample_rate)
        return request

    async def _submit(self, spec: RequestSpec, voice: Voice | None) -> EngineStream:
        """Submit to the engine; an opener cancelled meanwhile (the client left) still cancels the stream."""
        layer = self.layer
        request = EngineRequest(text=spec.text, voice=voice, sampling=spec.sampling, policy=spec.policy,
                                request_id=f"{self.conn_id}/{spec.id}", owner=self.owner)
        submit = asyncio.ensure_future(layer.engine.submit(request))
        try:
            return await asyncio.shield(submit)
        except asyncio.CancelledError:
            submit.add_done_callback(lambda f: f.result().cancel() if not f.cancelled() and f.exception() is None
                                     else None)
            raise
        except EngineOverloaded as exc:
            info = layer.engine.info
            raise ProtocolError(ErrorCode.OVERLOADED, f"the server is full ({info.max_streams} streams and "
                                f"{info.max_queue} queued); retry after {exc.retry_after_ms} ms", id=spec.id,
                                retry_after_ms=int(exc.retry_after_ms)) from None
        except TextError as exc:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"text: {exc}", id=spec.id, field="text") from None

    def finished(self, request: Request) -> None:
        """Called once by each request as it ends."""
        if self.requests.get(request.id) is request:
            del self.requests[request.id]
            self.layer.admission.release(self.address, self.key)

    def fatal(self, error: ProtocolError) -> None:
        """End every request with `error` and tell the front end to drop the connection."""
        for request in list(self.requests.values()):
            request.fail(ProtocolError(error.code, error.message, fatal=False))
        if self._on_fatal is not None:
            self._on_fatal(error)

    async def close(self) -> None:
        """The connection ended: every request in flight ends as disconnected; returns once all have."""
        self.closed = True
        self.ledger.close()
        requests = list(self.requests.values())
        for request in requests:
            request.disconnect()
        if requests:
            log.info("conn %s: closed with %d request(s) in flight; cancelled %s", self.conn_id, len(requests),
                     ", ".join(r.id for r in requests))
        await asyncio.gather(*(r.pump for r in requests), return_exceptions=True)
        self.layer.forget(self)


class RequestLayer:
    """The one request life cycle behind every front end."""

    def __init__(self, engine: EngineLink, config: ServerConfig, metrics: ServerMetrics, voices: VoiceCatalog,
                 aliases: dict[str, str]) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.voices = voices
        self.aliases = aliases  # voice alias -> preset, only presets offered
        self.admission = Admission(config)
        self.draining = False
        self._clients: set[Client] = set()
        self._watcher: asyncio.Task[None] | None = None

    # --- clients -----------------------------------------------------------------------------------
    def client(self, *, conn_id: str, address: str, key: int | None = None, owner: str | None = None,
               max_requests: int = 1, on_fatal: Callable[[ProtocolError], None] | None = None) -> Client:
        client = Client(self, conn_id, address, key, owner or conn_id, max_requests, on_fatal)
        self._clients.add(client)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="request layer watcher")
        return client

    def forget(self, client: Client) -> None:
        self._clients.discard(client)

    def check_open(self, req_id: str | None) -> None:
        """Raise shutting_down while new requests are refused (draining, engine gone)."""
        if self.draining:
            raise ProtocolError(
                ErrorCode.SHUTTING_DOWN, "the server is stopping and takes no new requests; retry later",
                                id=req_id, fatal=False, retry_after_ms=RETRY_AFTER_S * 1000)
        if not self.engine.healthy:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "the engine failed; the server is restarting, retry later",
                                id=req_id, fatal=False, retry_after_ms=RETRY_AFTER_S * 1000)

    @property
    def busy(self) -> bool:
        """True while any request is in flight, at any door."""
        return any(c.requests for c in self._clients)

    @property
    def owed_audio_s(self) -> float:
        return sum(c.ledger.owed_s for c in self._clients)

    def drain(self) -> None:
        """New requests are refused with shutting_down from now on; those in flight go on."""
        self.draining = True

    async def close(self) -> None:
        """End every request (as disconnected) and stop the watcher."""
        await asyncio.gather(*(c.close() for c in list(self._clients)), return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None

    # --- voices ------------------------------------------------------------------------------------
    async def resolve_voice(self, name: str | None, req_id: str | None) -> Voice | None:
        """The voice a request asked for (or the default), loaded off the event loop; unknown_voice if none.
        An alias (OpenAI's `alloy`, ...) stands for its preset."""
        name = name if name is not None else self.config.default_voice
        if name is None:
            return None
        name = self.aliases.get(name, name)
        if not _VOICE_NAME.fullmatch(name):
            raise ProtocolError(ErrorCode.UNKNOWN_VOICE, f"voice: {name[:40]!r} is not a voice name (letters, digits, "
                                "- and _, optionally one /, e.g. v2/en_speaker_6)", id=req_id, field="voice")
        try:
            return await self.voices.resolve(name)
        except VoiceUnavailable as exc:  # the message is client-safe: no paths, no operator advice
            examples = ", ".join([*self.aliases, *self.voices.names][:8])
            message = f"{exc}; e.g. {examples}" if examples else str(exc)
            raise ProtocolError(ErrorCode.UNKNOWN_VOICE, message, id=req_id, field="voice") from None

    # --- health ------------------------------------------------------------------------------------
    def full(self) -> bool:
        """A new stream would not be accepted now (every slot and, unless refuse_when_full, the queue taken)."""
        cfg, snap = self.config, self.engine.snapshot()
        slots = cfg.max_streams + (0 if cfg.refuse_when_full else cfg.max_queue)
        return snap.active + snap.queued >= slots

    def health(self, *, connections: int, connections_full: bool = False) -> tuple[int, dict[str, Any]]:
        """One JSON shape for every port: {"status": ok|unavailable, "reason": null|draining|full|engine_failed,
        "model", "active_streams", "queued_streams", "waiting_text_streams", "max_streams", "connections",
        "max_connections"}; 200 only when new streams are accepted (balancers route on the status code)."""
        snap = self.engine.snapshot()
        reason = ("engine_failed" if not self.engine.healthy else "draining" if self.draining
                  else "full" if self.full() or connections_full else None)
        body = {"status": "ok" if reason is None else "unavailable", "reason": reason,
                "model": self.engine.info.model_name, "active_streams": snap.active, "queued_streams": snap.queued,
                "waiting_text_streams": getattr(snap, "waiting_text", 0), "max_streams": self.config.max_streams,
                "connections": connections, "max_connections": self.config.max_connections}
        return (200 if reason is None else 503), body

    # --- the slow-consumer watcher -----------------------------------------------------------------
    async def _watch(self) -> None:
        """Every probe_interval: a client that owes receipts for audio and confirmed nothing for
        slow_consumer_timeout seconds loses its requests (slow_consumer) and its connection."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(cfg.probe_interval)  # the watcher's tick, not a synchronisation
            now = loop.time()
            for client in list(self._clients):
                stalled = client.ledger.stalled_for(now)
                if client.requests and stalled > cfg.slow_consumer_timeout:
                    owed = client.ledger.owed_s
                    log.warning("conn %s: slow consumer: %.1f s of audio unconfirmed for %.1f s; dropping",
                                client.conn_id, owed, stalled)
                    client.ledger.close()
                    client.fatal(ProtocolError(
                        ErrorCode.SLOW_CONSUMER, f"the client has not read {owed:.1f} s of audio for {stalled:.1f} s "
                        f"(slow_consumer_timeout {cfg.slow_consumer_timeout:g} s)"))
