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
still gets its audio). A reader that stops reading pauses its engine stream (the request
layer's credit); after slow_consumer_timeout seconds the connection is dropped.
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
from streaming.errors import ErrorCode

from ..limits import RateLimiter
from ..requests import Audio, Done, Request, RequestLayer, RequestSpec
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
    """Serves one TCP connection until it closes; `run()` returns once its requests have ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: WyomingServer,
                 conn_id: str, address: str = "") -> None:
        self._reader, self._writer = reader, writer
        self._server = server
        self._layer: RequestLayer = server.layer
        self.conn_id = conn_id
        cfg = self._layer.config
        self._rate = cfg.wyoming_sample_rate
        self._ids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self.client = self._layer.client(conn_id=conn_id, address=address, owner=conn_id, on_fatal=self._dropped)
        self._request: Request | None = None  # the request whose audio is being produced (one at a time)
        self._forward: asyncio.Task[None] | None = None  # writes its audio events
        self._streaming: Request | None = None  # the synthesize-start request still taking text
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
        cfg = self._layer.config
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
                    if self._closing:
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
                    raise Refusal(ErrorCode.RATE_LIMITED, f"more than {cfg.max_messages_per_s:g} events per second "
                                  f"(burst {cfg.message_burst})")
                await self._dispatch(event)
            except ProtocolError as exc:
                await self._refuse(Refusal(exc.code, exc.message))
                await self._linger()
                return
            except Refusal as exc:
                await self._refuse(exc)
                await self._linger()
                return
            except ConnectionError:  # reset by the peer (reading, or answering it): gone, as at the end of its stream
                self._peer_left()
                return

    def _peer_left(self) -> None:
        """End of the peer's stream: a stream still taking text can never be finished, so it ends as
        disconnected; a request with all its text goes on (its next write fails if the peer is really gone)."""
        req = self._streaming
        if req is not None:
            log.info("wyoming %s: the peer left during stream %s; cancelled", self.conn_id, req.id)
            req.disconnect()

    def _dropped(self, error: ProtocolError) -> None:
        """The request layer gave up on this peer (it stopped reading): drop the connection."""
        self._closing = True
        self._writer.transport.abort()

    async def _release(self) -> None:
        """Let the request in flight finish when the peer only stopped sending; otherwise it ends now."""
        if self._forward is not None:
            if self._closing or self._streaming is not None:
                await self.client.close()
                self._close_transport()  # writes still queued fail at once instead of waiting on the peer
            await asyncio.wait({self._forward}, timeout=None if not self._closing else
                               self._layer.config.close_timeout)
            if not self._forward.done():
                self._forward.cancel()
                await asyncio.gather(self._forward, return_exceptions=True)
        await self.client.close()
        self._close_transport()

    def _close_transport(self) -> None:
        self._closing = True
        if not self._writer.is_closing():
            self._writer.close()

    async def shutdown(self, code: str, message: str) -> None:
        """The server stops: end what is in flight, tell the peer (if it reads) and close."""
        if self._closing:
            return
        self._closing = True
        if self._request is not None:
            self._request.disconnect()  # counted like a disconnect: the server cut it
        try:  # the event's bytes are queued at once (events never interleave); only the drain may wait
            await asyncio.wait_for(async_write_event(Error(text=message, code=code).event(), self._writer), 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
        self._close_transport()

    async def _linger(self) -> None:
        await linger(self._reader, self._writer)

    async def _refuse(self, exc: Refusal) -> None:
        log.info("wyoming %s: refused: %s: %s", self.conn_id, exc.code, exc.message)
        self._layer.metrics.error(exc.code)
        if self._request is not None:  # a refused connection ends: its request in flight too
            self._request.disconnect()
        try:
            await self._send(Error(text=exc.message, code=exc.code).event())
        except (ConnectionError, OSError):
            pass
        self._closing = True

    # --- events ----------------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> None:
        kind, data = event.type, event.data
        limits = self._layer.config.limits
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
                raise Refusal(ErrorCode.BAD_FIELD, "synthesize-start: a stream is already open (send synthesize-stop "
                              "first)")
            check_text_format(data)
            await self._open(None, *voice_field(data))
        elif SynthesizeChunk.is_type(kind):
            text = text_field(data, required=False, max_chars=limits.max_request_chars)
            if self._streaming is None:
                raise Refusal(ErrorCode.BAD_FIELD, "synthesize-chunk: no stream is open (send synthesize-start first)")
            if text and self._streaming.failure is None:
                await self._streaming.feed(text)
        elif SynthesizeStop.is_type(kind):
            req = self._streaming
            if req is None:
                raise Refusal(ErrorCode.BAD_FIELD, "synthesize-stop: no stream is open (send synthesize-start first)")
            self._streaming = None
            if req.failure is None:
                await req.end()
        else:
            log.debug("wyoming %s: ignoring a %r event", self.conn_id, kind[:40])

    async def _open(self, text: str | None, voice_name: str | None, language: str | None) -> None:
        """Open a request (after the previous one finished) and start writing its audio."""
        if self._forward is not None:
            await asyncio.wait({self._forward})  # one request at a time, in the order they came
            if self._closing:  # that request failed and the connection is closing
                return
        if self._server.draining:
            raise Refusal(ErrorCode.SHUTTING_DOWN, "the server is stopping and takes no new requests; retry later")
        spec = RequestSpec(id=f"w{next(self._ids)}", text=text, voice=self._voice(voice_name, language),
                           sampling=self._server.sampling, policy=self._server.policy, encoding="pcm_s16le",
                           sample_rate=self._rate)
        req = await self.client.open(spec)
        self._request = req
        if text is None:
            self._streaming = req
        self._forward = asyncio.create_task(self._write_audio(req), name=f"wyoming {self.conn_id} {spec.id}")

    def _voice(self, name: str | None, language: str | None) -> str | None:
        """The voice named (a preset or an alias), else the first preset of `language`, else the default."""
        if name is None and language is not None:
            name = voice_for_language(language, self._layer.voices.names)
        if name is None or name == DEFAULT_VOICE and self._layer.config.default_voice is None:
            return None  # the server's default voice
        return name

    # --- audio -------------------------------------------------------------------------------------

    async def _write_audio(self, req: Request) -> None:
        """One request's events as Wyoming audio events; a failure is refused, and the connection closes."""
        started = False
        done: Done | None = None
        try:
            async for event in req.events():
                if isinstance(event, Audio):
                    if not started:
                        started = True
                        await self._send(AudioStart(rate=self._rate, width=WIDTH, channels=CHANNELS,
                                                    timestamp=0).event())
                    await self._send(WyAudioChunk(rate=self._rate, width=WIDTH, channels=CHANNELS, audio=event.data,
                                                  timestamp=event.first_sample * 1000 // self._rate).event())
                    req.delivered(event)
                elif isinstance(event, Done):
                    done = event
            assert done is not None
            if done.reason == "end":
                if not started:
                    await self._send(AudioStart(rate=self._rate, width=WIDTH, channels=CHANNELS, timestamp=0).event())
                await self._send(AudioStop(timestamp=done.samples * 1000 // self._rate).event())
                if req.piecewise:
                    await self._send(SynthesizeStopped().event())
        except (ConnectionError, OSError):
            log.info("wyoming %s: request %s: the peer is gone", self.conn_id, req.id)
            req.disconnect()
        finally:
            if self._request is req:
                self._request = None
            if self._streaming is req:
                self._streaming = None
            self._last_activity = asyncio.get_running_loop().time()
        if done is not None and done.error is not None and not self._closing:
            await self._refuse(Refusal(done.error.code, done.error.message))
            self._close_transport()

    async def _send(self, event: Event) -> None:
        """Write one event (a stalled peer is the request layer's slow-consumer watcher's business)."""
        async with self._write_lock:
            if self._closing:  # refused or shut down: nothing more goes out
                raise ConnectionResetError("the connection is closing")
            await async_write_event(event, self._writer)
