"""`EngineProcess`: the `EngineLink` over an engine in its own process (the design vLLM V1's engine core uses).

    link = await EngineProcess.start({"model": "bark-small", "device": "cuda",
                                      "engine_config": {"max_streams": 32}})
    stream = await link.submit(EngineRequest(text="Hello."))
    async for event in stream: ...
    await link.close()

Load on the front end (networking, parsing, encoding, metrics) then cannot take the
engine's CPU share through the GIL. The child is `python -m server.enginelink.child`
with one end of a socketpair; frames are `channel.py`'s. One reader task dispatches
what the child sends: events to per-stream queues, replies to the calls waiting for
them, snapshots to `snapshot()`. `submit`, `feed`, `flush`, `end` are request/reply
and raise what the local engine raises (EngineOverloaded, TextError); `cancel`,
`pause`, `resume` are one-way.

If the child dies (or the channel breaks) `healthy` turns False, every stream in
flight ends with StreamDone(reason "error", code "internal"), every pending call
and every later submit raises EngineOverloaded, and `wait_failed()` returns.

This module never imports torch (nor anything that does): a front-end process that
only holds an EngineProcess has no torch in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from streaming.errors import ConfigError, EngineOverloaded, TextError, VoiceError, WeightsError
from streaming.events import AudioChunk, EngineSnapshot, Event, StreamDone, StreamStats
from streaming.textprep import check_text

from .base import EngineInfo, EngineRequest
from .channel import (EVENT_TYPES, ChannelError, FrameTooLarge, decode_body, decode_error, decode_event,
                      decode_info, decode_snapshot, encode_frame, encode_request, frame_length)

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # close(): the child's engine.stop() and last frames, then it is killed
EXIT_WAIT_S = 2.0  # after the channel closed: how long to wait for the child's exit status before killing it
RETRY_AFTER_DEAD_MS = 5000
START_ERRORS = {cls.__name__: cls for cls in (WeightsError, ConfigError, VoiceError)}  # raised again by start()
ROOT = Path(__file__).resolve().parents[2]  # where `server` and `streaming` are: the child imports them from here


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running, channel closed"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _plain(value: Any) -> Any:
    """The load spec as msgpack-able values: paths as strings, dataclasses (an EngineConfig) as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


async def _read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    n = frame_length(await reader.readexactly(4))
    return decode_body(await reader.readexactly(n))


class _StreamState:
    """What the link knows about one stream: its event queue and whether it ended."""

    __slots__ = ("id", "queue", "done", "claimed", "text_ended", "samples")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.done = False  # its StreamDone is queued
        self.claimed = False  # its submit reply arrived (events may come first)
        self.text_ended = False
        self.samples = 0  # audio received, for a StreamDone the link makes up when the process dies


class ProcessStream:
    """One engine stream in the engine process, behind the `EngineStream` interface."""

    def __init__(self, link: EngineProcess, state: _StreamState) -> None:
        self._link = link
        self._state = state
        self.id = state.id

    async def feed(self, text: str) -> None:
        if not isinstance(text, str):
            raise TextError(f"text: expected a string, got {type(text).__name__}")
        if self._state.text_ended:
            raise TextError("text: this request's text has already ended")
        check_text(text)  # a lone surrogate cannot be encoded for the channel: the handle's own TextError
        if not self._state.done:  # an ended stream takes text and does nothing with it, like a finished handle
            await self._link._call({"t": "feed", "s": self.id, "text": text})

    async def flush(self) -> None:
        if not (self._state.text_ended or self._state.done):
            await self._link._call({"t": "flush", "s": self.id})

    async def end(self) -> None:
        if not (self._state.text_ended or self._state.done):
            await self._link._call({"t": "end", "s": self.id})
        self._state.text_ended = True

    def cancel(self) -> None:
        self._link._control("cancel", self._state)

    def pause(self) -> None:
        self._link._control("pause", self._state)

    def resume(self) -> None:
        self._link._control("resume", self._state)

    def __aiter__(self):
        return self._events()

    async def _events(self):
        while True:
            event = await self._state.queue.get()
            yield event
            if isinstance(event, StreamDone):
                return


class EngineProcess:
    """An engine in a child process as an `EngineLink`; use `await EngineProcess.start(load)`."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, info: EngineInfo, snapshot: EngineSnapshot) -> None:
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self.info = info
        self._snapshot = snapshot
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, _StreamState] = {}
        self._failed = asyncio.Event()
        self._channel_open = True
        self._lost_once = False
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._dead_message = "engine: not accepting requests (process died)"
        # for every audio chunk: (parent arrival - child emit, child send - child emit) in seconds (benchmarks, metrics)
        self.on_audio_latency: Callable[[float, float], None] | None = None
        self._reader_task = asyncio.ensure_future(self._read_loop())
        self._exit_task = asyncio.ensure_future(self._watch_exit())

    # ------------------------------------------------------------------ starting
    @classmethod
    async def start(cls, load: dict[str, Any], *, timeout: float = 600) -> EngineProcess:
        """Spawn the engine process, load and warm up the engine there; returns once it is ready.

        `load`: `streaming.bundle.load_engine`'s keyword arguments except `config`, plus
        `engine_config`: a dict of EngineConfig fields. A WeightsError, ConfigError or
        VoiceError in the child is raised here as the same class with the child's
        message; any other failure (or no `ready` within `timeout` s) as RuntimeError.
        """
        spec = _plain(load)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        if level not in ("debug", "info", "warning", "error", "critical"):
            level = "warning"
        parent_sock, child_sock = socket.socketpair()
        try:  # started in ROOT so `-m` imports this project (not a `streaming.py` in the caller's directory);
            # --cwd: it then moves to ours, where relative paths in the spec mean what they mean here
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server.enginelink.child", "--fd", str(child_sock.fileno()),
                "--log-level", level, "--cwd", os.getcwd(), pass_fds=(child_sock.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, cwd=ROOT)
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()  # the child holds its own copy: EOF on ours means the child is gone
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
            writer.write(encode_frame({"t": "load", "spec": spec}))
            await writer.drain()
            try:
                first = await asyncio.wait_for(_read_message(reader), timeout)
            except (asyncio.IncompleteReadError, ConnectionError):
                code = await _reap(proc)
                raise RuntimeError(f"the engine process ended before it was ready ({describe_exit(code)}; "
                                   "its log above says why)") from None
            except asyncio.TimeoutError:
                raise RuntimeError(f"the engine process was not ready after {timeout:g} s") from None
            if first["t"] == "failed":
                await _reap(proc, STOP_TIMEOUT_S)
                error = START_ERRORS.get(first.get("error"))
                if error is not None:
                    raise error(first.get("message", ""), field=first.get("field"))
                raise RuntimeError(f"the engine failed to start: {first.get('error')}: {first.get('message')}")
            if first["t"] != "ready":
                raise ChannelError(f"expected ready or failed from the engine process, got {first['t']!r}")
            link = cls(proc, reader, writer, decode_info(first), decode_snapshot(first["snap"]))
        except BaseException:
            if proc.returncode is None:
                proc.kill()
            await _reap(proc)
            if writer is not None:
                writer.close()
            else:
                parent_sock.close()
            raise
        log.info("engine process %d ready: %s, %d streams", proc.pid, link.info.model_name, link.info.max_streams)
        return link

    # ------------------------------------------------------------------ EngineLink
    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def healthy(self) -> bool:
        return self._channel_open and self._proc.returncode is None and not self._closing

    def snapshot(self) -> EngineSnapshot:
        return self._snapshot if self._channel_open else EngineSnapshot(0, 0, 0)

    async def submit(self, request: EngineRequest) -> ProcessStream:
        if request.text is not None:
            if not isinstance(request.text, str):
                raise TextError(f"text: expected a string, got {type(request.text).__name__}")
            check_text(request.text)  # a lone surrogate cannot be encoded for the channel
        state = await self._call({"t": "submit", "req": encode_request(request)})
        state.text_ended = request.text is not None
        return ProcessStream(self, state)

    async def wait_failed(self) -> None:
        await self._failed.wait()

    async def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to stop (its streams end "cancelled"/shutting_down), wait, then kill it. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._close_task)

    # ------------------------------------------------------------------ calls
    def _check_alive(self) -> None:
        if not self._channel_open:
            raise EngineOverloaded(self._dead_message, retry_after_ms=RETRY_AFTER_DEAD_MS)
        if self._closing:
            raise EngineOverloaded("engine: not accepting requests (stopped)", retry_after_ms=RETRY_AFTER_DEAD_MS)

    async def _call(self, message: dict[str, Any]) -> Any:
        self._check_alive()
        rid = next(self._ids)
        try:
            frame = encode_frame({**message, "id": rid})
        except FrameTooLarge as exc:
            raise TextError(f"text: the request is too large for the engine channel ({exc})") from None
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._writer.write(frame)
            await self._writer.drain()
            return await future
        except ConnectionError:  # the channel broke while sending: the reader fails everything
            self._check_alive()
            return await future
        finally:
            self._pending.pop(rid, None)

    def _control(self, kind: str, state: _StreamState) -> None:
        if self._channel_open and not state.done:
            self._writer.write(encode_frame({"t": kind, "s": state.id}))

    # ------------------------------------------------------------------ receiving
    async def _read_loop(self) -> None:
        try:
            while True:
                self._dispatch(await _read_message(self._reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child closed its end: it exited (or is exiting)
        except Exception as exc:  # a frame this side cannot use: the child is broken
            log.critical("engine channel broken: %s", exc, exc_info=not isinstance(exc, (ChannelError, FrameTooLarge)))
            if self._proc.returncode is None:
                self._proc.kill()
        await self._lost()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind in EVENT_TYPES:
            sid = message["s"]
            event = decode_event(message)
            state = self._streams.get(sid)
            if state is None:  # its submit reply is still on the way
                state = self._streams[sid] = _StreamState(sid)
            if isinstance(event, AudioChunk):
                state.samples += len(event.samples)
                if self.on_audio_latency is not None:
                    self._note_latency(time.monotonic() - message["ts"], message["sent"] - message["ts"])
            state.queue.put_nowait(event)
            if isinstance(event, StreamDone):
                state.done = True
                if state.claimed:
                    del self._streams[sid]
        elif kind == "reply":
            if "snap" in message:
                self._snapshot = decode_snapshot(message["snap"])
            future = self._pending.pop(message["id"], None)
            if future is not None and future.done():
                future = None  # the caller gave up (cancelled)
            if "error" in message:
                if future is not None:
                    future.set_exception(decode_error(message["error"]))
            elif "stream" in message:
                self._claim(message["stream"], future)
            elif future is not None:
                future.set_result(None)
        elif kind == "snap":
            self._snapshot = decode_snapshot(message["snap"])
        else:
            raise ChannelError(f"unexpected frame type {kind!r} from the engine process")

    def _note_latency(self, total: float, in_child: float) -> None:
        try:
            self.on_audio_latency(total, in_child)  # type: ignore[misc]
        except Exception:  # the observer's bug must not pass for a broken channel (which kills the engine)
            log.exception("on_audio_latency failed; it is switched off")
            self.on_audio_latency = None

    def _claim(self, sid: int, future: asyncio.Future[Any] | None) -> None:
        state = self._streams.get(sid)
        if state is None:
            state = self._streams[sid] = _StreamState(sid)
        state.claimed = True
        if state.done:
            del self._streams[sid]
        if future is not None:
            future.set_result(state)
        elif not state.done:  # nobody will read it: stop it (its events are dropped with it when it ends)
            self._control("cancel", state)

    # ------------------------------------------------------------------ dying and closing
    async def _watch_exit(self) -> None:
        await self._proc.wait()
        self._writer.close()  # the reader sees EOF even if the child's end lives on elsewhere

    async def _lost(self) -> None:
        """The channel closed: fail everything in flight, once."""
        if self._lost_once:
            return
        self._lost_once = True
        self._channel_open = False
        if self._closing:
            self._fail_all("cancelled", "shutting_down", "engine stopped",
                           "engine: not accepting requests (stopped)")
            return
        code = await _reap(self._proc, EXIT_WAIT_S)
        how = describe_exit(code)
        log.critical("engine process %d died unexpectedly (%s)", self._proc.pid, how)
        self._fail_all("error", "internal", f"the engine process died ({how})", self._dead_message)

    def _fail_all(self, reason: str, code: str, message: str, refusal: str) -> None:
        self._dead_message = refusal
        for state in list(self._streams.values()):
            if not state.done:
                state.done = True
                state.queue.put_nowait(StreamDone(reason, state.samples, StreamStats(samples=state.samples),
                                                  code, message))
        self._streams.clear()
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(EngineOverloaded(refusal, retry_after_ms=RETRY_AFTER_DEAD_MS))
        self._pending.clear()
        self._failed.set()

    async def _close(self, timeout: float) -> None:
        self._closing = True
        if self._channel_open:
            try:
                self._writer.write(encode_frame({"t": "stop"}))
            except (ConnectionError, RuntimeError):
                pass
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout)
        except asyncio.TimeoutError:
            log.warning("engine process %d did not stop within %.1f s: killing it", self._proc.pid, timeout)
            self._proc.kill()
            await self._proc.wait()
        self._writer.close()
        await asyncio.gather(self._reader_task, self._exit_task, return_exceptions=True)
        await self._lost()  # if the reader was cancelled before it saw the end
        log.info("engine process %d stopped (%s)", self._proc.pid, describe_exit(self._proc.returncode))


async def _reap(proc: asyncio.subprocess.Process, timeout: float = EXIT_WAIT_S) -> int | None:
    """The child's exit status, killing it if it has not exited within `timeout` s."""
    try:
        return await asyncio.wait_for(asyncio.shield(proc.wait()), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        return await proc.wait()
