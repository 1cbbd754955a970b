"""One Wyoming connection: read events, run one request at a time, write its audio events.

    describe                                   -> info
    ping                                       -> pong
    synthesize {text, voice?}                  -> audio-start, audio-chunk..., audio-stop
    synthesize-start {voice?}                  (opens a request whose text follows, as `start` does)
      synthesize-chunk {text}...               (each one is fed to that request, as `text` is)
      synthesize {text}                        (ignored: Home Assistant repeats the whole text for servers
                                                that do not stream; speaking it would say everything twice)
    synthesize-stop                            -> audio-start, audio-chunk..., audio-stop, synthesize-stopped

Audio is s16 mono at the rate the server was configured with (`--wyoming-sample-rate`),
announced in `audio-start`; Wyoming lets the client ask for none. `audio-start` goes out with
the first audio, so a request refused before it has none.

Anything that cannot be served (bad JSON, an unknown voice, a chunk without a stream, too much
text, the server full or stopping) gets an `error` event {text, code} with one of the WebSocket
protocol's error codes, then the connection closes: Home Assistant reads until `audio-stop` or
`synthesize-stopped`, so closing is what ends its wait. Unknown event types are ignored, as
Wyoming servers do.

The reader keeps reading while audio is written, so a peer that leaves is noticed at once: a
stream whose text was still open is cancelled; a request whose text is complete goes on, and
ends at its next write if the peer is really gone (a peer that only closed its sending side
still gets its audio). A reader that stops reading pauses its engine stream; after
slow_consumer_timeout seconds the connection is dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from wyoming.audio import AudioChunk as WyAudioChunk
from wyoming.audio import AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from protocol import ProtocolError
from streaming.constants import SAMPLE_RATE
from streaming.engine import EngineOverloaded, SpeechRequest, StreamHandle
from streaming.errors import TextError
from streaming.events import AudioChunk, StreamDone
from streaming.voices import Voice

from ..context import RequestState, ServerContext, engine_failure
from ..flow import SlowReader, paced_write
from ..formats import AudioPipeline
from ..limits import RateLimiter
from .events import DEFAULT_VOICE, Refusal, check_text_format, read_event, text_field, voice_field, voice_for_language

if TYPE_CHECKING:
    from .server import WyomingServer

log = logging.getLogger(__name__)

WIDTH = 2  # bytes per sample: s16
CHANNELS = 1
IDLE_POLL_S = 1.0  # while a request runs, how often the reader re-checks the idle deadline
LINGER_S = 0.25  # after a refusal: how long to read and drop what the peer already sent before closing
LINGER_BYTES = 1 << 20


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After a refusal: send FIN, then read and drop what the peer already sent (briefly), so that closing does
    not reset the connection (unread input) before the peer has read the `error`."""
    async def discard() -> None:
        total = 0
        while total < LINGER_BYTES:
            data = await reader.read(65_536)
            if not data:
                return
            total += len(data)

    if writer.is_closing():  # the peer reset it: nothing to linger for (uvloop raises on write_eof)
        return
    try:
        if writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(discard(), LINGER_S)
    except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
        pass


class WyomingSession:
    """Serves one TCP connection until it closes; `run()` returns once its engine streams are released."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: WyomingServer,
                 conn_id: str) -> None:
        self._reader, self._writer = reader, writer
        self._server = server
        self._ctx: ServerContext = server.ctx
        self.conn_id = conn_id
        cfg = self._ctx.config
        self._rate = cfg.wyoming_sample_rate
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self._request: RequestState | None = None  # the request whose audio is being produced (one at a time)
        self._streaming: RequestState | None = None  # the synthesize-start request still taking text
        self._audio_started = False  # audio-start sent for the current request
        self._peer_gone = False  # the peer left: requests in flight end as "disconnected"
        self._closing = False
        self._bucket = RateLimiter(cfg.max_messages_per_s, cfg.message_burst, cfg.rate_limit_strikes)
        self._last_activity = asyncio.get_running_loop().time()

    @property
    def busy(self) -> bool:
        """True while a request is in flight."""
        return self._request is not None

    # --- the connection ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except BaseException:  # a bug or a cancel: a request still taking text would never end, so _release
            self._closing = True  # must cancel it, not wait for it (that hung the connection and held its slot)
            raise
        finally:
            await self._release()

    async def _serve(self) -> None:
        """Read and dispatch events until the peer leaves, idles, or something is refused."""
        loop = asyncio.get_running_loop()
        cfg = self._ctx.config
        while not self._closing:
            read = asyncio.ensure_future(read_event(self._reader, self._server.max_event_bytes))
            try:
                while not read.done():
                    if cfg.idle_timeout is None:
                        timeout = None
                    elif self._request is not None:
                        timeout = IDLE_POLL_S
                    else:
                        timeout = max(0.0, self._last_activity + cfg.idle_timeout - loop.time())
                    await asyncio.wait({read}, timeout=timeout)
                    if (not read.done() and self._request is None and cfg.idle_timeout is not None
                            and loop.time() - self._last_activity >= cfg.idle_timeout):
                        log.info("wyoming %s: idle for %.0f s; closing", self.conn_id, cfg.idle_timeout)
                        return
            finally:
                if not read.done():
                    read.cancel()
            try:
                event = read.result()
                if event is None:
                    self._peer_left()
                    return
                self._last_activity = loop.time()
                verdict = self._bucket.take(loop.time())
                if verdict != "ok":  # a dropped chunk would silently change the text: refuse and close
                    raise Refusal("rate_limited", f"more than {cfg.max_messages_per_s:g} events per second "
                                  f"(burst {cfg.message_burst})")
                await self._dispatch(event)
            except Refusal as exc:
                await self._refuse(exc)
                await self._linger()
                return
            except ConnectionError:  # reset by the peer (reading, or answering it): gone, as at the end of its stream
                self._peer_left()
                return

    def _peer_left(self) -> None:
        """End of the peer's stream: a stream still taking text can never be finished, so it is cancelled;
        a request with all its text goes on (its next write fails if the peer is really gone)."""
        req = self._streaming
        if req is not None:
            log.info("wyoming %s: the peer left during stream %s; cancelled", self.conn_id, req.id)
            self._peer_gone = True
            req.handle.cancel()

    async def _release(self) -> None:
        """Let the request in flight finish when the peer only stopped sending; otherwise cancel it (its pump
        sees the engine's `cancelled` and records it)."""
        req = self._request
        if req is not None and req.pump is not None:
            if self._closing or self._streaming is not None:
                req.handle.cancel()
                self._close_transport()  # writes still queued fail at once instead of waiting on the peer
            await asyncio.wait({req.pump}, timeout=None if not self._closing else self._ctx.config.close_timeout)
            if not req.pump.done():
                req.pump.cancel()
                await asyncio.gather(req.pump, return_exceptions=True)
        self._close_transport()

    def _close_transport(self) -> None:
        self._closing = True
        if not self._writer.is_closing():
            self._writer.close()

    async def shutdown(self, code: str, message: str) -> None:
        """The server stops: cancel what is in flight, tell the peer (if it reads) and close."""
        if self._closing:
            return
        self._closing = True
        if self._request is not None:
            self._peer_gone = True  # counted like a disconnect: the server cut it
            self._request.handle.cancel()
        try:  # the event's bytes are queued at once (events never interleave); only the drain may wait
            await asyncio.wait_for(async_write_event(Error(text=message, code=code).event(), self._writer), 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        self._close_transport()

    async def _linger(self) -> None:
        await linger(self._reader, self._writer)

    async def _refuse(self, exc: Refusal) -> None:
        log.info("wyoming %s: refused: %s: %s", self.conn_id, exc.code, exc.message)
        self._ctx.metrics.error(exc.code)
        if self._request is not None:  # a refused connection ends: its request in flight too
            self._request.handle.cancel()
            self._peer_gone = True
        try:
            await self._send(Error(text=exc.message, code=exc.code).event())
        except (SlowReader, ConnectionError, OSError):
            pass
        self._closing = True

    # --- events ----------------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> None:
        kind, data = event.type, event.data
        limits = self._ctx.config.limits
        if Describe.is_type(kind):
            await self._send(self._server.info)
        elif Ping.is_type(kind):
            text = data.get("text")
            await self._send(Pong(text=text if isinstance(text, str) else None).event())
        elif Synthesize.is_type(kind):
            if self._streaming is not None:
                log.debug("wyoming %s: synthesize inside stream %s ignored (the whole text, repeated for "
                          "servers that do not stream)", self.conn_id, self._streaming.id)
                return
            text = text_field(data, required=True, max_chars=limits.max_request_chars)
            check_text_format(data)
            await self._open(text, *voice_field(data))
        elif SynthesizeStart.is_type(kind):
            if self._streaming is not None:
                raise Refusal("bad_field", "synthesize-start: a stream is already open (send synthesize-stop "
                              "first)")
            check_text_format(data)
            await self._open(None, *voice_field(data))
        elif SynthesizeChunk.is_type(kind):
            await self._chunk(text_field(data, required=False, max_chars=limits.max_request_chars))
        elif SynthesizeStop.is_type(kind):
            req = self._streaming
            if req is None:
                raise Refusal("bad_field", "synthesize-stop: no stream is open (send synthesize-start first)")
            self._streaming = None
            req.ended = True
            await asyncio.to_thread(req.handle.end)
        else:
            log.debug("wyoming %s: ignoring a %r event", self.conn_id, kind[:40])

    async def _chunk(self, text: str) -> None:
        req = self._streaming
        if req is None:
            raise Refusal("bad_field", "synthesize-chunk: no stream is open (send synthesize-start first)")
        max_chars = self._ctx.config.limits.max_request_chars
        req.chars += len(text)
        if req.chars > max_chars:
            raise Refusal("text_too_long", f"text: this stream's {req.chars} characters exceed the maximum of "
                          f"{max_chars}")
        if text and req.failure is None:
            try:
                await asyncio.to_thread(req.handle.feed, text)
            except TextError as exc:
                raise Refusal("bad_field", f"text: {exc}") from None

    async def _open(self, text: str | None, voice_name: str | None, language: str | None) -> None:
        """Submit a request to the engine (after the previous one finished) and start its pump."""
        ctx, cfg = self._ctx, self._ctx.config
        if self._server.draining:
            raise Refusal("shutting_down", "the server is stopping and takes no new requests; retry later")
        if self._request is not None and self._request.pump is not None:
            await asyncio.wait({self._request.pump})  # one request at a time, in the order they came
            if self._closing:  # that request failed and the connection is closing
                return
        voice = await self._voice(voice_name, language)
        req_id = f"w{next(self._ids)}"
        speech = SpeechRequest(text=text, voice=voice, sampling=self._server.sampling, policy=self._server.policy,
                               request_id=f"{self.conn_id}/{req_id}", owner=self.conn_id)
        try:
            handle = await asyncio.to_thread(ctx.engine.submit, speech, loop=asyncio.get_running_loop())
        except EngineOverloaded as exc:
            raise Refusal("overloaded", f"the server is full ({cfg.max_streams} streams and {cfg.max_queue} "
                          f"queued); retry after {int(exc.retry_after_ms)} ms") from None
        except TextError as exc:
            raise Refusal("bad_field", f"text: {exc}") from None
        streaming = text is None
        req = RequestState(req_id, "start" if streaming else "speak", "pcm_s16le", handle, sample_rate=self._rate,
                           pipeline=AudioPipeline("pcm_s16le", self._rate))
        self._request = req
        self._audio_started = False
        if streaming:
            self._streaming = req
            if cfg.request_text_timeout is not None:
                asyncio.get_running_loop().call_later(cfg.request_text_timeout, self._text_deadline, req)
        ctx.metrics.request_started()
        req.pump = asyncio.create_task(self._pump(req), name=f"wyoming {self.conn_id} pump {req_id}")
        log.info("wyoming %s: request %s: %s accepted (stream %s, voice %s, s16 at %d Hz)", self.conn_id, req_id,
                 "synthesize-start" if streaming else "synthesize", handle.id,
                 voice_name or cfg.default_voice or DEFAULT_VOICE, self._rate)

    async def _voice(self, name: str | None, language: str | None) -> Voice | None:
        """The voice named (a preset or an alias), else the first preset of `language`, else the default."""
        ctx = self._ctx
        if name is None and language is not None:
            name = voice_for_language(language, ctx.voices.names)
        if name is None or name == DEFAULT_VOICE and ctx.config.default_voice is None:
            name = None  # the server's default voice
        try:
            return await ctx.resolve_voice(name, "wyoming")
        except ProtocolError as exc:
            message = exc.message.replace("`ready.voices` lists them", "`describe` lists them")
            raise Refusal(exc.code, message) from None

    def _text_deadline(self, req: RequestState) -> None:
        """A stream that got no text within request_text_timeout seconds fails (it would wait forever)."""
        if req.chars == 0 and not req.ended and self._streaming is req:
            req.failure = ProtocolError("idle_timeout", f"the stream received no text within "
                                        f"{self._ctx.config.request_text_timeout:g} s of synthesize-start")
            req.handle.cancel()

    # --- audio -------------------------------------------------------------------------------------

    async def _pump(self, req: RequestState) -> None:
        """Turn one engine stream into audio events; record its metrics (exactly once, cancelled or not);
        refuse and close on failure."""
        done: StreamDone | None = None
        reason = "disconnected"
        assert req.pipeline is not None
        try:
            try:
                async for event in req.handle:
                    if isinstance(event, StreamDone):
                        done = event
                        break
                    if req.failure is None and isinstance(event, AudioChunk) and event.samples.size:
                        audio_s = event.samples.size / SAMPLE_RATE
                        req.track_lead(asyncio.get_running_loop().time(), audio_s)
                        self._ctx.metrics.audio_sent(audio_s)
                        await self._send_audio(req, (await req.convert(event.samples)).data, req.handle)
                if done is not None and done.reason == "end" and req.failure is None:
                    await self._send_audio(req, (await req.convert(None)).data, req.handle)
                    if not self._audio_started:
                        await self._send(AudioStart(rate=self._rate, width=WIDTH, channels=CHANNELS,
                                                    timestamp=0).event())
                    await self._send(AudioStop(timestamp=req.pipeline.samples_out * 1000 // self._rate).event())
                    if req.kind == "start":
                        await self._send(SynthesizeStopped().event())
                reason = self._reason(req, done)
            except SlowReader:
                reason = "slow_consumer"
                log.warning("wyoming %s: request %s: the peer read nothing for %.0f s; dropped", self.conn_id,
                            req.id, self._ctx.config.slow_consumer_timeout)
                self._writer.transport.abort()
            except (ConnectionError, OSError):
                log.info("wyoming %s: request %s: the peer is gone", self.conn_id, req.id)
                self._peer_gone = True
            except Exception as exc:  # noqa: BLE001 - one request's bug must not take the server down
                log.exception("wyoming %s: request %s: pump failed", self.conn_id, req.id)
                req.failure = req.failure or ProtocolError("internal", f"server error: {type(exc).__name__}")
                reason = "error"
            finally:
                req.handle.cancel()  # a no-op once it ended
                req.pipeline.close()
        finally:  # also when the pump itself is cancelled (the server closes): "disconnected"
            self._finish(req, done, reason)
        if reason == "error" and not self._closing:
            failure = req.failure or engine_failure(req.id, done)
            await self._refuse(Refusal(failure.code, failure.message))
            self._close_transport()

    def _finish(self, req: RequestState, done: StreamDone | None, reason: str) -> None:
        stats = done.stats if done is not None else None
        self._ctx.metrics.record_done(reason, stats.ttfa_s if stats else None, stats.rtf if stats else None,
                                      queued_s=stats.queued_s if stats else None,
                                      stage_s=stats.stage_s if stats else None, ahead_s=req.least_lead_s)
        if self._request is req:
            self._request = None
        if self._streaming is req:
            self._streaming = None
        self._last_activity = asyncio.get_running_loop().time()
        assert req.pipeline is not None
        log.info("wyoming %s: request %s: %s, %d samples, ttfa %s", self.conn_id, req.id, reason,
                 req.pipeline.samples_out, f"{stats.ttfa_s * 1000:.0f} ms" if stats and stats.ttfa_s else "-")

    def _reason(self, req: RequestState, done: StreamDone | None) -> str:
        if req.failure is not None or done is None or done.reason == "error":
            return "error"
        if done.reason == "cancelled" and self._peer_gone:
            return "disconnected"
        return done.reason

    async def _send_audio(self, req: RequestState, data: bytes, handle: StreamHandle) -> None:
        if not data:
            return
        if not self._audio_started:
            self._audio_started = True
            await self._send(AudioStart(rate=self._rate, width=WIDTH, channels=CHANNELS, timestamp=0).event(), handle)
        assert req.pipeline is not None
        first = req.pipeline.samples_out - len(data) // WIDTH
        await self._send(WyAudioChunk(rate=self._rate, width=WIDTH, channels=CHANNELS, audio=data,
                                      timestamp=first * 1000 // self._rate).event(), handle)

    async def _send(self, event: Event, handle: StreamHandle | None = None) -> None:
        """Write one event; while the write waits on the peer the engine stream is paused, and a peer that
        takes nothing for slow_consumer_timeout seconds raises SlowReader."""
        async with self._write_lock:
            if self._closing:  # refused or shut down: nothing more goes out
                raise ConnectionResetError("the connection is closing")
            await paced_write(async_write_event(event, self._writer), handle,
                              self._ctx.config.slow_consumer_timeout)

