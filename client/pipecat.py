"""`BarkTTSService`: bark-stream as a Pipecat text-to-speech service (protocol v1 over one WebSocket).

    pip install 'bark-stream[pipecat]'

    from client.pipecat import BarkTTSService

    tts = BarkTTSService(url="ws://localhost:8765/v1/stream", api_key=os.environ.get("BARK_API_KEY"),
                         voice="v2/en_speaker_6")
    pipeline = Pipeline([transport.input(), stt, user_aggregator, llm, tts, transport.output(),
                         assistant_aggregator])

How it maps Pipecat onto the protocol:

- one WebSocket per service, opened when the pipeline starts and kept for its life;
- a Pipecat context (one per LLM turn, or per TTSSpeakFrame) is one request whose id is the
  context id: its first sentence sends `start`, each sentence `text` then `flush` (Pipecat already cut
  it at a sentence end; with TextAggregationMode.TOKEN the tokens go as they come and the server
  cuts sentences), the end of the turn `end`; `done` closes the context with a TTSStoppedFrame;
- an interruption sends `cancel` for the interrupted context on the same socket: no reconnect, no
  handshake per turn (Pipecat's InterruptibleTTSService reconnects on every interruption because it
  cannot cancel);
- audio is asked for as `pcm_s16le` at the pipeline's output rate (PipelineParams.audio_out_sample_rate)
  when the server offers that rate (8, 16, 22.05, 24, 44.1, 48 kHz), else at 24 kHz and resampled here;
- each `segment` (which text the samples [start, end) speak) becomes TTSTextFrames, one per word, timed
  inside the segment in proportion to the words' positions in its text (Bark aligns no words, so a
  word's time is an estimate within its segment): after an interruption the assistant context holds
  about what was actually heard;
- the connection is reopened with exponential backoff when the server closes it with 1001 (going away),
  1006 (lost), 1011 (server error), 1012 (restart, e.g. a drain) or 1013 (try again later); any other
  close (1008 after a policy error, ...) is reported and the socket is reopened only when there is text
  to speak again;
- with several URLs (replicas, or one behind HAProxy and a spare), a connection goes to the first that
  answers, starting from the last one used: a reconnect after a replica stops lands on another;
- a `keepalive` every `keepalive_s` seconds keeps an idle connection under the server's idle timeout.

`params` is the protocol's params map (text_temp, waveform_temp, seed, ...), sent with every request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

try:
    from loguru import logger
    from pipecat.audio.utils import create_stream_resampler
    from pipecat.frames.frames import ErrorFrame, Frame, StartFrame, TTSAudioRawFrame, TTSStoppedFrame
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import WebsocketTTSService
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("client.pipecat needs Pipecat: pip install 'bark-stream[pipecat]'") from exc

from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.protocol import State

from protocol import (
    DEFAULT_SAMPLE_RATE,
    MAX_SERVER_FRAME_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    decode_server_message,
    encode_client_message,
)

DEFAULT_URL = "ws://localhost:8765/v1/stream"
RETRY_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})
ENCODING = "pcm_s16le"
_WORD = re.compile(r"\S+")


def segment_words(text: str, start_s: float, end_s: float) -> list[tuple[str, float]]:
    """(word, seconds) for each word of a segment, placed by its character offset within [start_s, end_s)."""
    matches = list(_WORD.finditer(text))
    if not matches:
        return []
    span = max(0.0, end_s - start_s)
    return [(m.group(), start_s + span * m.start() / len(text)) for m in matches]


class BarkTTSService(WebsocketTTSService):
    """Text to speech through a bark-stream server's WebSocket (protocol v1)."""

    Settings = TTSSettings
    _settings: TTSSettings

    def __init__(
        self,
        *,
        url: str | Sequence[str] = DEFAULT_URL,
        api_key: str | None = None,
        voice: str | None = None,
        params: Mapping[str, Any] | None = None,
        sample_rate: int | None = None,
        keepalive_s: float = 30.0,
        open_timeout: float = 10.0,
        stop_frame_timeout_s: float = 30.0,
        settings: TTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            url: the server's WebSocket URL (ws:// or wss://, path /v1/stream), or several replicas' URLs: a
                connection goes to the first that answers, starting from the one used last; after a drop
                (a replica stopping) the reconnect moves on to the next. Audio of a context that was in
                flight on the lost connection is not replayed (its context ends with an error).
            api_key: sent as `Authorization: Bearer`; None when the server needs no key.
            voice: a voice from the server's `ready.voices` or an alias (alloy, ...); None = the server's default.
                Change it at run time with TTSUpdateSettingsFrame(delta=BarkTTSService.Settings(voice=...)).
            params: the protocol's `params` map for every request (text_temp, waveform_temp, seed, ...).
            sample_rate: output rate; None = the pipeline's audio_out_sample_rate.
            keepalive_s: seconds between `keepalive` messages on an idle connection.
            open_timeout: seconds for the handshake and the server's `ready`.
            stop_frame_timeout_s: seconds a context may go without audio before Pipecat closes it; Bark's
                first audio can take a few seconds on a CPU, so longer than Pipecat's 3 s default.
        """
        default = TTSSettings(model=None, voice=voice, language=None)
        if settings is not None:
            default.apply_update(settings)
        super().__init__(push_text_frames=False, push_stop_frames=True, push_start_frame=True,
                         sample_rate=sample_rate, stop_frame_timeout_s=stop_frame_timeout_s, settings=default,
                         **kwargs)
        self._urls = [url] if isinstance(url, str) else list(url)
        if not self._urls or not all(isinstance(u, str) and u for u in self._urls):
            raise ValueError(f"url: expected a WebSocket URL or a non-empty list of them, got {url!r}")
        self._url_index = 0  # the URL connected to last (where the next connection attempt starts)
        self._api_key = api_key
        self._params = dict(params or {})
        self._keepalive_s = keepalive_s
        self._open_timeout = open_timeout
        self._receive_task: asyncio.Task[Any] | None = None
        self.ready: dict[str, Any] | None = None  # the server's `ready` on the current connection
        self.connections_opened = 0  # WebSocket handshakes this service made (1 for a whole session when healthy)
        self._wire_rate = DEFAULT_SAMPLE_RATE  # the rate requests ask the server for
        self._open: dict[str, bool] = {}  # context id -> its last text ended in whitespace (started, no `done` yet)
        self._ended: set[str] = set()  # contexts whose `end` was sent
        self._resamplers: dict[str, Any] = {}  # per context, when the server cannot send the pipeline's rate

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def url(self) -> str:
        """The URL connected to last (or about to be tried first)."""
        return self._urls[self._url_index]

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._connect()

    async def _connect(self) -> None:
        await super()._connect()
        await self._connect_websocket()
        if self._websocket is not None and (self._receive_task is None or self._receive_task.done()):
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error), name="receive")
        self._create_keepalive_task(self._keepalive_s)

    async def _disconnect(self) -> None:
        await super()._disconnect()
        await self._cancel_keepalive_task()
        if self._receive_task is not None:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self) -> None:
        """Open the socket and read `ready`; a failure is reported and leaves no socket (the caller retries)."""
        if self._websocket is not None and self._websocket.state is State.OPEN:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else None
        failures: list[str] = []
        for i in range(len(self._urls)):
            index = (self._url_index + i) % len(self._urls)
            url = self._urls[index]
            ws = None
            try:
                ws = await self._websocket_connect(url, additional_headers=headers, max_size=MAX_SERVER_FRAME_BYTES,
                                                   compression=None, open_timeout=self._open_timeout)
                ready = decode_server_message(await asyncio.wait_for(ws.recv(), self._open_timeout))
                if ready.get("type") != "ready" or ready.get("protocol") != PROTOCOL_VERSION:
                    raise ConnectionError(f"expected `ready` for protocol {PROTOCOL_VERSION}, got "
                                          f"{ready.get('type')!r}")
                self._url_index = index
                break
            except Exception as exc:  # noqa: BLE001 - every way to fail is one report
                if ws is not None:
                    await ws.close()
                logger.warning(f"{self}: cannot connect to {url}: {exc}")
                failures.append(f"{url}: {exc}")
        else:
            self._websocket = None
            error = f"{self}: cannot connect to " + "; ".join(failures)
            await self.push_error(error_msg=error, exception=ConnectionError(error))
            await self._call_event_handler("on_connection_error", "; ".join(failures))
            return
        self._websocket = ws
        self.ready = ready
        self.connections_opened += 1
        rates = (ready.get("encoding_sample_rates") or {}).get(ENCODING) or [ready.get("sample_rate")]
        self._wire_rate = self.sample_rate if self.sample_rate in rates else int(ready["sample_rate"])
        self._open.clear()
        self._ended.clear()
        self._resamplers.clear()
        logger.debug(f"{self}: connected to {self.url} ({ready.get('model')}, audio at {self._wire_rate} Hz)")
        await self._call_event_handler("on_connected")

    async def _disconnect_websocket(self) -> None:
        ws, self._websocket = self._websocket, None
        self._open.clear()
        self._ended.clear()
        self._resamplers.clear()
        try:
            if ws is not None:
                await ws.close()
        except Exception as exc:  # noqa: BLE001
            logger.warning(f"{self}: error while closing: {exc}")
        finally:
            await self._call_event_handler("on_disconnected")

    async def _send_keepalive(self) -> None:
        await self._send({"type": "keepalive"})

    async def _send(self, msg: Mapping[str, Any]) -> None:
        if self._websocket is None:
            raise ConnectionError("not connected")
        await self._websocket.send(encode_client_message(msg))

    # --- text in --------------------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send `text` to the request of `context_id` (opening it with `start` first); audio comes back on
        the receive task."""
        try:
            if self._websocket is None or self._websocket.state is not State.OPEN:
                await self._connect()  # reopen on demand after a close that was not retried
                if self._websocket is None:
                    raise ConnectionError(f"cannot connect to {', '.join(self._urls)}")
            if context_id in self._ended:
                raise RuntimeError(f"context {context_id} already ended")
            if context_id not in self._open:
                await self._send(self._start_message(context_id))
                self._open[context_id] = True
            elif text and not text[0].isspace() and not self._open[context_id]:
                text = " " + text  # sentences arrive without the space between them
            max_chars = int((self.ready or {}).get("limits", {}).get("max_text_chars", 4096))
            for i in range(0, len(text), max_chars):
                await self._send({"type": "text", "id": context_id, "text": text[i:i + max_chars]})
            if text:
                self._open[context_id] = text[-1].isspace()
            if not self._is_streaming_tokens:  # a whole sentence: speak it now rather than wait for more text
                await self._send({"type": "flush", "id": context_id})
            await self.start_tts_usage_metrics(text)
            yield None
        except Exception as exc:  # noqa: BLE001 - reported as frames, the pipeline goes on
            logger.warning(f"{self}: {exc}")
            yield ErrorFrame(error=f"{self}: {exc}")
            yield TTSStoppedFrame(context_id=context_id)

    def _start_message(self, context_id: str) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "start", "id": context_id, "encoding": ENCODING}
        if self._wire_rate != DEFAULT_SAMPLE_RATE:
            msg["sample_rate"] = self._wire_rate
        if self._settings.voice:
            msg["voice"] = self._settings.voice
        if self._params:
            msg["params"] = self._params
        return msg

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is complete: `end` its request."""
        context_id = context_id or self.get_active_audio_context_id()
        if not context_id or context_id not in self._open or context_id in self._ended:
            return
        self._ended.add(context_id)
        try:
            await self._send({"type": "end", "id": context_id})
        except (ConnectionClosed, ConnectionError) as exc:
            logger.debug(f"{self}: end for {context_id} not sent: {exc}")

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """An interruption: cancel that request on this socket (its late audio is dropped by the base class)."""
        if context_id in self._open and self._websocket is not None:
            try:
                await self._send({"type": "cancel", "id": context_id})
            except (ConnectionClosed, ConnectionError) as exc:
                logger.debug(f"{self}: cancel for {context_id} not sent: {exc}")
        await super().on_audio_context_interrupted(context_id)

    # --- audio out ------------------------------------------------------------------------------------

    async def _receive_messages(self) -> None:
        ws = self._websocket
        if ws is None:
            raise ConnectionError("not connected")
        try:
            async for frame in ws:
                await self._on_message(decode_server_message(frame))
        except ProtocolError as exc:
            await ws.close(1002, "invalid frame")
            raise ConnectionError(f"the server sent an invalid frame: {exc}") from exc
        except ConnectionClosed:
            pass
        code = ws.close_code or 1006
        if self._disconnecting or code in RETRY_CLOSE_CODES:
            return  # the base class reconnects with backoff (or stops, when we are the ones disconnecting)
        reason = ws.close_reason or ""
        await self.push_error(error_msg=f"{self}: the server closed the connection ({code} {reason}); it is "
                                        "reopened when there is text to speak")
        self._websocket = None
        raise ConnectionClosedOK(None, None)  # ends the receive loop without a reconnect

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        context_id = msg.get("id")
        if kind == "audio":
            if context_id in self._open and self.audio_context_available(context_id):
                audio = msg["pcm"]
                if self._wire_rate != self.sample_rate:
                    resampler = self._resamplers.setdefault(context_id, create_stream_resampler())
                    audio = await resampler.resample(audio, self._wire_rate, self.sample_rate)
                await self.append_to_audio_context(context_id, TTSAudioRawFrame(
                    audio=audio, sample_rate=self.sample_rate, num_channels=1, context_id=context_id))
        elif kind == "segment":
            if context_id in self._open and self.audio_context_available(context_id):
                words = segment_words(msg["text"], msg["start_sample"] / self._wire_rate,
                                      msg["end_sample"] / self._wire_rate)
                await self.add_word_timestamps(words, context_id)
        elif kind == "done":
            self._open.pop(context_id, None)
            self._ended.discard(context_id)
            self._resamplers.pop(context_id, None)
            if self.audio_context_available(context_id):
                await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
                await self.remove_audio_context(context_id)
        elif kind == "error":
            if context_id is not None and context_id not in self._open:
                logger.debug(f"{self}: {msg['code']} for {context_id}, which already ended: {msg['message']}")
            else:
                where = f"request {context_id}" if context_id is not None else "connection"
                await self.push_error(error_msg=f"{self}: {where}: {msg['code']}: {msg['message']}")
