"""`python -m server.enginelink.child --fd N`: the engine process, the other end of `EngineProcess`.

It reads the load spec from the channel (fd N, one end of a socketpair), loads and
warms up the engine, answers `ready` (or `failed` and exits 2), then serves:

- the main thread waits for the end: a `stop` frame, the channel closing (the parent
  died: no orphan engines) or the engine thread dying (exit 1, after the engine
  ended every stream with an error);
- a reader thread decodes frames; `submit`, `feed`, `flush`, `end` run in a small
  thread pool (text segmentation and tokenisation happen in those calls: off the
  engine thread, and one big text does not hold up the controls behind it), the
  calls of one stream in order; `cancel`, `pause`, `resume` are applied at once;
- one writer thread owns the socket's send side, fed by a queue: the engine thread
  only puts (stream id, event, time.monotonic()) on it through the handle's sink and
  never waits on the socket;
- a snapshot thread pushes the engine's occupancy whenever it changed, at most
  every SNAPSHOT_S.

SIGINT and SIGTERM are ignored: the parent owns Ctrl-C and a supervisor's SIGTERM to the
whole process group, drains, and then stops this process through the channel.
Log lines go to stderr in the server's format, so they interleave with the parent's.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from streaming.events import StreamDone

from .base import EngineInfo
from .channel import (ChannelError, FrameTooLarge, decode_body, decode_request, encode_error, encode_event,
                      encode_frame, encode_info, encode_snapshot, frame_length)

if TYPE_CHECKING:
    from streaming.engine import Engine
    from streaming.stream import StreamHandle

logger = logging.getLogger("server.enginelink.child")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # server/__main__.py's
TEXT_THREADS = 4  # submit/feed/flush/end calls in flight at once (text work, different streams)
SNAPSHOT_S = 0.05  # occupancy pushed at most this often
WRITE_BATCH = 256  # frames joined into one send
WRITER_FLUSH_S = 5.0  # how long the last frames may take to leave before the process exits
EXIT_OK, EXIT_ENGINE_DIED, EXIT_START_FAILED = 0, 1, 2


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """n bytes, or EOFError if the peer closed first."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("channel closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    return decode_body(recv_exactly(sock, frame_length(recv_exactly(sock, 4))))


def engine_config(fields: dict[str, Any]):
    """EngineConfig from a dict of its fields (nested ChunkSchedule / SchedulerConfig as dicts)."""
    from streaming.codec import ChunkSchedule
    from streaming.engine import EngineConfig
    from streaming.errors import ConfigError
    from streaming.scheduler import SchedulerConfig

    fields = dict(fields)
    try:
        if isinstance(fields.get("chunks"), dict):
            fields["chunks"] = ChunkSchedule(**fields["chunks"])
        if isinstance(fields.get("scheduler"), dict):
            fields["scheduler"] = SchedulerConfig(**fields["scheduler"])
        return EngineConfig(**fields)
    except TypeError as exc:  # an unknown field name
        raise ConfigError(f"engine_config: {exc}") from None


def load(spec: dict[str, Any]) -> Engine:
    """`load_engine(**spec, config=EngineConfig(**spec["engine_config"]))`, not started."""
    from streaming.bundle import load_engine
    from streaming.threads import serial_main_thread

    serial_main_thread()  # this loading thread must not keep an OpenMP pool that competes with the engine's
    spec = dict(spec)
    config = engine_config(spec.pop("engine_config", None) or {})
    return load_engine(**spec, config=config)


class Child:
    """The engine process's side of the channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out: queue.Queue[Any] = queue.Queue()  # dict frames, (stream, event, t) triples, None = last
        self.engine: Engine | None = None
        self.handles: dict[int, StreamHandle] = {}  # streams that may still take text or controls
        self.finished = threading.Event()  # stop frame, channel closed, or engine died
        self.exit_code = EXIT_OK
        self.pool = ThreadPoolExecutor(TEXT_THREADS, thread_name_prefix="engine-text")
        self._serial: dict[int, collections.deque[dict[str, Any]]] = {}  # per stream: text calls not yet run
        self._serial_lock = threading.Lock()
        self._last_snap: dict[str, int] | None = None
        self.loading = True  # until the engine is ready or failed to start
        self._writer = threading.Thread(target=self._write_loop, name="channel-writer", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        try:
            first = recv_message(self.sock)
        except (EOFError, OSError, ChannelError, FrameTooLarge) as exc:
            logger.error("engine process: no load spec from the parent (%s)", exc)
            return EXIT_START_FAILED
        self._writer.start()
        threading.Thread(target=self._read_loop, name="channel-reader", daemon=True).start()
        try:
            if first.get("t") != "load":
                raise ChannelError(f"expected a load frame, got {first.get('t')!r}")
            engine = load(first["spec"])
            engine.start()  # warm-up
        except BaseException as exc:
            from streaming.errors import BarkStreamError

            if isinstance(exc, BarkStreamError):  # the parent raises it again and prints the message
                logger.debug("engine failed to start: %s", exc)
            else:
                logger.error("engine failed to start: %s", exc, exc_info=True)
            self.send({"t": "failed", "error": type(exc).__name__, "message": str(exc),
                       "field": getattr(exc, "field", None)})
            self.loading = False
            self._flush_and_close()
            return EXIT_START_FAILED
        self.engine = engine
        self.loading = False
        info = EngineInfo(engine.model_name, engine.config.max_streams, engine.config.max_queue)
        self.send({"t": "ready", **encode_info(info), "snap": self._snap()})
        threading.Thread(target=self._snapshot_loop, name="channel-snapshots", daemon=True).start()
        self.finished.wait()
        engine.stop()  # ends every stream still in flight (shutting_down), through the writer
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._flush_and_close()
        return self.exit_code

    def _finish(self, code: int = EXIT_OK) -> None:
        if not self.finished.is_set():
            self.exit_code = code
            self.finished.set()

    def _flush_and_close(self) -> None:
        self.out.put(None)
        self._writer.join(WRITER_FLUSH_S)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # ------------------------------------------------------------------ sending
    def send(self, message: dict[str, Any]) -> None:
        self.out.put(message)

    def sink(self, stream: int, event) -> None:
        """The handles' event sink, on the engine thread: never blocks."""
        self.out.put((stream, event, time.monotonic()))
        if isinstance(event, StreamDone):
            self.handles.pop(stream, None)

    def _write_loop(self) -> None:
        while True:
            items = [self.out.get()]
            while len(items) < WRITE_BATCH:
                try:
                    items.append(self.out.get_nowait())
                except queue.Empty:
                    break
            last = any(item is None for item in items)
            data = bytearray()
            sent = time.monotonic()
            for item in items:
                if item is None:
                    break
                try:
                    data += encode_frame(encode_event(*item, sent) if isinstance(item, tuple) else item)
                except (FrameTooLarge, TypeError, ValueError) as exc:  # a bug: say so, keep the channel
                    logger.error("engine process: cannot send a frame: %s", exc)
            try:
                self.sock.sendall(data)
            except OSError as exc:  # the parent is gone
                logger.info("engine channel closed while sending (%s): stopping", exc)
                self._finish()
                return
            if last:
                return

    def _snap(self) -> dict[str, int]:
        assert self.engine is not None
        snap = encode_snapshot(self.engine.snapshot())
        self._last_snap = snap
        return snap

    def _snapshot_loop(self) -> None:
        engine = self.engine
        assert engine is not None
        while not self.finished.wait(SNAPSHOT_S):
            if not engine.healthy:  # the engine thread died (it logged why and ended every stream)
                logger.critical("engine thread died: the engine process exits with status %d", EXIT_ENGINE_DIED)
                self._finish(EXIT_ENGINE_DIED)
                return
            last = self._last_snap
            if self._snap() != last:
                self.send({"t": "snap", "snap": self._last_snap})

    # ------------------------------------------------------------------ receiving
    def _read_loop(self) -> None:
        while True:
            try:
                message = recv_message(self.sock)
            except (EOFError, OSError) as exc:
                reason = f"channel closed ({exc})"
            except (ChannelError, FrameTooLarge) as exc:
                reason = f"bad frame from the parent ({exc})"
                logger.error("engine process: %s", reason)
            else:
                if message["t"] == "stop":
                    reason = "asked to stop"
                elif self.engine is None:  # still loading: nothing else is sent before `ready`
                    logger.error("engine process: %r frame before ready", message["t"])
                    continue
                else:
                    try:
                        self._dispatch(message)
                    except Exception:
                        logger.exception("engine process: cannot handle a %r frame", message.get("t"))
                    continue
            if self.loading:  # loading cannot be interrupted: leave now, nobody waits for this engine
                logger.info("engine process: %s while loading: exiting", reason)
                logging.shutdown()
                os._exit(EXIT_OK)
            if self.engine is None:  # it failed to start: run() reports that and exits
                return
            logger.info("engine process: %s: stopping", reason)
            self._finish()
            return

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "submit":
            self.pool.submit(self._submit, message)
        elif kind in ("feed", "flush", "end"):
            self._text_call(message)
        elif kind in ("cancel", "pause", "resume"):
            handle = self.handles.get(message["s"])
            if handle is not None:  # else it already ended: nothing to do, as for a finished handle
                getattr(handle, kind)()
        else:
            raise ChannelError(f"unknown frame type {kind!r}")

    def _reply(self, rid: int, exc: BaseException | None = None, **fields: Any) -> None:
        if exc is not None:
            from streaming.errors import BarkStreamError

            if not isinstance(exc, BarkStreamError):
                logger.error("engine process: call %d failed: %s", rid, exc, exc_info=exc)
            self.send({"t": "reply", "id": rid, "error": encode_error(exc)})
        else:
            self.send({"t": "reply", "id": rid, **fields})

    def _submit(self, message: dict[str, Any]) -> None:
        from streaming.stream import SpeechRequest

        assert self.engine is not None
        try:
            req = decode_request(message["req"])
            speech = SpeechRequest(text=req.text, voice=req.voice, sampling=req.sampling, policy=req.policy,
                                   request_id=req.request_id, owner=req.owner)
            handle = self.engine.submit(speech, sink=self.sink)
        except Exception as exc:
            self._reply(message["id"], exc)
            return
        self.handles[handle.id] = handle
        if handle.finished:  # it ended before it was registered: the sink's pop came first
            self.handles.pop(handle.id, None)
        self._reply(message["id"], stream=handle.id, snap=self._snap())

    def _text_call(self, message: dict[str, Any]) -> None:
        """Run feed/flush/end in the pool, one stream's calls in the order they came."""
        stream = message["s"]
        with self._serial_lock:
            pending = self._serial.get(stream)
            if pending is not None:  # a call of this stream is running: it runs this one next
                pending.append(message)
                return
            self._serial[stream] = collections.deque([message])
        self.pool.submit(self._run_text_calls, stream)

    def _run_text_calls(self, stream: int) -> None:
        while True:
            with self._serial_lock:
                pending = self._serial[stream]
                if not pending:
                    del self._serial[stream]
                    return
                message = pending.popleft()
            handle = self.handles.get(stream)
            try:
                if handle is not None:  # else it already ended: what a finished handle's call does (nothing)
                    if message["t"] == "feed":
                        handle.feed(message["text"])
                    else:
                        getattr(handle, message["t"])()
            except Exception as exc:
                self._reply(message["id"], exc)
            else:
                self._reply(message["id"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m server.enginelink.child",
                                 description="The engine process of the server (started by EngineProcess).")
    ap.add_argument("--fd", type=int, required=True, help="this process's end of the channel socketpair")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error", "critical"))
    ap.add_argument("--cwd", default=None, help="directory relative paths in the load spec are relative to")
    args = ap.parse_args(argv)
    if args.cwd:  # started in the project's directory (sys.path[0]); the parent's paths are relative to its own
        os.chdir(args.cwd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    sock = socket.socket(fileno=args.fd)
    return Child(sock).run()


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no waiting for the text pool or torch's teardown: everything was sent
