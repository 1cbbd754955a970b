"""The three front ends ("doors") behind one set of async verbs, for the contract suite (tests/test_contract.py).

Each door is driven with its real client: the WebSocket with `websockets` (RawClient), the OpenAI HTTP API with
the official `openai` SDK (AsyncOpenAI), Wyoming with the `wyoming` library's AsyncTcpClient. Whatever came back
is normalised into an `Outcome`: the audio, the request layer's error codes the wire form maps back to, the HTTP
status, the retry hint, the field named, whether the server closed the connection; `wire` keeps the door's own
form for the per-door checks.

    door = DOORS["http"](srv, key="k1")
    outcome = await door.speak("Hello there.")            # one whole-text request, read to its end
    job = await door.begin(LONG)                          # a request in flight (refused: AssertionError)
    await job.first_audio(); await job.drop()             # ...then the client goes away
    held = await door.hold_connection()                   # an idle connection the server has admitted
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import openai
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wyoming.audio import AudioChunk, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStopped, SynthesizeVoice

from server.httpapi.errors import LAYER_ERRORS
from tests.server_fixtures import RawClient, Result, ServerThread

# greedy and capped (48 semantic tokens a segment), one seed: the same request gives the same audio on every door
PARAMS: dict[str, Any] = {"greedy": True, "max_semantic_tokens": 48, "seed": 7}
WYOMING_PARAMS = tuple(PARAMS.items())  # Wyoming carries no params: the server applies these to every request
READ_TIMEOUT = 60.0  # seconds any one read may wait (a hang guard)
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*):")  # the field a message names first ("params.text_temp: ...")


@dataclass
class Outcome:
    """What one request got, whatever door it went through."""

    door: str
    # the request layer's error codes the wire form maps back to (an HTTP status + OpenAI code may stand for
    # several: LAYER_ERRORS is not one-to-one); empty: no error
    codes: frozenset[str] = frozenset()
    audio: bytes = b""  # s16le mono audio received (24 kHz unless the server says otherwise)
    reason: str | None = None  # how it ended on the wire: "end" (complete), "cancelled", "error", None (refused)
    status: int | None = None  # HTTP status: the HTTP door's, or a refused WebSocket handshake's
    closed: bool = False  # the server closed the connection after answering
    retry_after_s: float | None = None  # the retry hint (retry_after_ms, Retry-After), in seconds
    field: str | None = None  # the field the error names (HTTP: `param`; others: its message's first "name:")
    message: str = ""
    wire: dict[str, Any] = dc_field(default_factory=dict)  # the door's own form (error message, body, headers...)

    @property
    def served(self) -> bool:
        """Complete, with audio and no error."""
        return not self.codes and self.reason == "end" and bool(self.audio)

    def __repr__(self) -> str:  # audio as its length: assertion messages stay readable
        return (f"Outcome({self.door}, codes={sorted(self.codes)}, reason={self.reason}, audio={len(self.audio)} B, "
                f"status={self.status}, closed={self.closed}, retry_after_s={self.retry_after_s}, "
                f"field={self.field!r}, message={self.message[:120]!r}, wire={self.wire!r:.300})")


def http_codes(status: int, code: str | None = None) -> frozenset[str]:
    """The layer codes an HTTP answer maps back to through LAYER_ERRORS (its status, and its OpenAI code if any)."""
    return frozenset(str(c) for c, (s, _, oc) in LAYER_ERRORS.items() if s == status and code in (None, oc))


def named_field(message: str) -> str | None:
    match = _FIELD.match(message)
    return match.group(1) if match else None


class InFlight:
    """A request the server accepted and is answering."""

    async def first_audio(self) -> None:
        """Return once the first audio bytes arrived."""
        raise NotImplementedError

    async def finish(self) -> Outcome:
        """Read to the end of the request."""
        raise NotImplementedError

    async def drop(self) -> None:
        """The client goes away mid-stream (its connection closes)."""
        raise NotImplementedError

    async def cancel(self) -> Outcome:
        """Cancel the request through the protocol (WebSocket only) and read its end."""
        raise NotImplementedError


class Held:
    """An idle connection the server has admitted (it answered on it)."""

    def __init__(self, close: Any) -> None:
        self._close = close

    async def close(self) -> None:
        await self._close()


class Door:
    """One front end of a server; `key` is the API key its requests carry (None: none)."""

    name = ""

    def __init__(self, srv: ServerThread, key: str | None = None) -> None:
        self.srv = srv
        self.key = key

    async def speak(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS,
                    **fields: Any) -> Outcome:
        """One whole-text request on a new connection, read to its end."""
        raise NotImplementedError

    async def begin(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS) -> InFlight:
        """A whole-text request on a new connection, accepted (AssertionError otherwise), not yet read."""
        raise NotImplementedError

    async def start_and_feed(self, *texts: str) -> InFlight:
        """A request whose text follows: opened, fed `texts`, never ended."""
        raise NotImplementedError(f"{self.name} has only whole-text requests")

    async def hold_connection(self) -> Held:
        raise NotImplementedError


# --- WebSocket (protocol v1) -----------------------------------------------------------------------------


class WebSocketDoor(Door):
    name = "websocket"

    async def connect(self, **kw: Any) -> RawClient:
        """A protocol connection (after `ready`); InvalidStatus when the handshake is refused."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else None
        return await RawClient.connect_with(self.srv.url, additional_headers=headers, **kw)

    @staticmethod
    def speak_message(req_id: str, text: str, voice: Any, params: Mapping[str, Any],
                      fields: Mapping[str, Any]) -> dict[str, Any]:
        msg: dict[str, Any] = {"type": "speak", "id": req_id, "text": text, "params": dict(params), **fields}
        if voice is not None:
            msg["voice"] = voice
        return msg

    async def speak(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS,
                    conn: RawClient | None = None, **fields: Any) -> Outcome:
        """`conn`: send it on that open connection (left open) instead of a new one."""
        client = conn
        if client is None:
            try:
                client = await self.connect()
            except InvalidStatus as exc:
                return handshake_outcome(exc)
        req_id = f"r{len(client.results) + 1}"
        try:
            await client.send(self.speak_message(req_id, text, voice, params, fields))
            return await ws_outcome(client, req_id)
        finally:
            if conn is None:
                await client.close()

    async def begin(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS) -> InFlight:
        client = await self.connect()
        await client.send(self.speak_message("job", text, voice, params, {}))
        return WebSocketInFlight(client, "job")

    async def start_and_feed(self, *texts: str) -> InFlight:
        client = await self.connect()
        await client.send({"type": "start", "id": "job", "params": PARAMS})
        for text in texts:
            await client.send({"type": "text", "id": "job", "text": text})
        return WebSocketInFlight(client, "job")

    async def hold_connection(self) -> Held:
        client = await self.connect()  # `ready` arrived: the server admitted it
        return Held(client.close)


def handshake_outcome(exc: InvalidStatus) -> Outcome:
    """A refused WebSocket handshake: its status maps back to layer codes like an HTTP answer's."""
    response = exc.response
    retry = response.headers.get("Retry-After")
    body = response.body.decode(errors="replace") if response.body else ""
    return Outcome("websocket", http_codes(response.status_code), status=response.status_code, closed=True,
                   retry_after_s=float(retry) if retry else None, message=body.strip(),
                   wire={"handshake": response.status_code, "headers": dict(response.headers)})


async def ws_outcome(client: RawClient, req_id: str, stop_at_error: bool = True) -> Outcome:
    """Read until `req_id` has its `done`, an `error` names it (a refusal gets no `done`; a failure's `done` is
    queued right behind its `error`), or the connection closes."""
    result = client.results.setdefault(req_id, Result())
    close: tuple[int | None, str] | None = None
    try:
        while result.done is None and not (stop_at_error and result.errors):
            await asyncio.wait_for(client.next_message(), READ_TIMEOUT)
            if client.general_errors:  # a connection-level error: the close follows
                close = await asyncio.wait_for(client.closed(), READ_TIMEOUT)
                break
    except ConnectionClosed as exc:
        close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")
    error = (result.errors or client.general_errors or [None])[0]
    audio = b"".join(m["pcm"] for m in result.audio)
    reason = result.done["reason"] if result.done is not None else None
    if error is None:
        return Outcome("websocket", audio=audio, reason=reason, closed=close is not None,
                       wire={"done": result.done, "close": close})
    retry = error.get("retry_after_ms")
    return Outcome("websocket", frozenset({error["code"]}), audio=audio, reason=reason or "error",
                   closed=close is not None, retry_after_s=retry / 1000 if retry is not None else None,
                   field=named_field(error["message"]), message=error["message"],
                   wire={"error": error, "done": result.done, "close": close})


class WebSocketInFlight(InFlight):
    def __init__(self, client: RawClient, req_id: str) -> None:
        self.client, self.id = client, req_id

    async def first_audio(self) -> None:
        result = self.client.results.setdefault(self.id, Result())
        while not result.audio:
            assert result.done is None and not result.errors, f"no audio: {ws_outcome_now(self.client, self.id)}"
            await asyncio.wait_for(self.client.next_message(), READ_TIMEOUT)

    async def finish(self) -> Outcome:
        try:
            return await ws_outcome(self.client, self.id, stop_at_error=False)
        finally:
            await self.client.close()

    async def cancel(self) -> Outcome:
        await self.client.send({"type": "cancel", "id": self.id})
        return await self.finish()

    async def drop(self) -> None:
        self.client.ws.transport.abort()  # no closing handshake: the peer just vanishes


def ws_outcome_now(client: RawClient, req_id: str) -> dict[str, Any]:
    result = client.results.get(req_id, Result())
    return {"errors": result.errors, "done": result.done, "general": client.general_errors}


# --- OpenAI HTTP API ---------------------------------------------------------------------------------------


class HttpDoor(Door):
    name = "http"

    def client(self) -> openai.AsyncOpenAI:
        """The official SDK, no retries: each call sees the first answer."""
        assert self.srv.server is not None and self.srv.server.http_port is not None
        return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{self.srv.server.http_port}/v1",
                                  api_key=self.key or "none", max_retries=0, timeout=READ_TIMEOUT)

    def _create(self, client: openai.AsyncOpenAI, text: str, voice: Any, params: Mapping[str, Any],
                fields: Mapping[str, Any]) -> Any:
        body: dict[str, Any] = {"params": dict(params), **fields}
        return client.audio.speech.with_streaming_response.create(
            model="tts-1", input=text, voice=voice if voice is not None else openai.omit, response_format="pcm",
            extra_body=body)

    async def speak(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS,
                    **fields: Any) -> Outcome:
        async with self.client() as client:
            try:
                async with self._create(client, text, voice, params, fields) as response:
                    audio = await response.read()
                    return Outcome("http", audio=audio, reason="end", status=response.status_code,
                                   wire={"headers": dict(response.headers)})
            except openai.APIStatusError as exc:
                return http_error_outcome(exc)

    async def begin(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS) -> InFlight:
        client = self.client()
        context = self._create(client, text, voice, params, {})
        try:
            response = await context.__aenter__()  # the status and headers come with the first audio
        except openai.APIStatusError as exc:
            await client.close()
            raise AssertionError(f"refused: {http_error_outcome(exc)}") from None
        return HttpInFlight(client, context, response)

    async def hold_connection(self) -> Held:
        """A raw keep-alive connection that got an answer (so the server counted it), left open."""
        assert self.srv.server is not None and self.srv.server.http_port is not None
        sock = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", self.srv.server.http_port), 10)
        answer = await asyncio.to_thread(raw_get, sock, "/healthz")
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

        async def close() -> None:
            sock.close()
        return Held(close)


def http_error_outcome(exc: openai.APIStatusError) -> Outcome:
    body = exc.body if isinstance(exc.body, dict) else {}
    retry = exc.response.headers.get("retry-after")
    return Outcome("http", http_codes(exc.status_code, body.get("code")), reason=None, status=exc.status_code,
                   retry_after_s=float(retry) if retry else None, field=body.get("param"),
                   message=str(body.get("message", "")), wire={"error": body, "headers": dict(exc.response.headers)})


class HttpInFlight(InFlight):
    def __init__(self, client: openai.AsyncOpenAI, context: Any, response: Any) -> None:
        self.client, self.context, self.response = client, context, response
        self.chunks = response.iter_bytes()
        self.audio = b""

    async def first_audio(self) -> None:
        while not self.audio:
            self.audio += await asyncio.wait_for(self.chunks.__anext__(), READ_TIMEOUT)

    async def finish(self) -> Outcome:
        try:
            async for chunk in self.chunks:
                self.audio += chunk
            return Outcome("http", audio=self.audio, reason="end", status=self.response.status_code)
        finally:
            await self.drop()

    async def drop(self) -> None:
        await self.context.__aexit__(None, None, None)  # a response not read to its end: the connection closes
        await self.client.close()


def raw_get(sock: socket.socket, target: str) -> bytes:
    """GET `target` on an open socket (keep-alive); the whole answer, head and body."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and len(body) >= _content_length(head):
            return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


# --- Wyoming -------------------------------------------------------------------------------------------------


class WyomingDoor(Door):
    name = "wyoming"

    def client(self) -> AsyncTcpClient:
        assert self.srv.server is not None and self.srv.server.wyoming_port is not None
        return AsyncTcpClient("127.0.0.1", self.srv.server.wyoming_port, connect_timeout=10,
                              read_timeout=READ_TIMEOUT)

    @staticmethod
    def synthesize(text: str, voice: Any) -> Event:
        if voice is None or isinstance(voice, str):  # a name: as Home Assistant sends it
            return Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event()
        return Event(type="synthesize", data={"text": text, "voice": voice})  # anything else, as it is

    async def speak(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS,
                    conn: AsyncTcpClient | None = None, **fields: Any) -> Outcome:
        """`conn`: send it on that open connection (see open_connection) instead of a new one. `params`: Wyoming
        carries none (the server's wyoming_params apply: the suite sets them to the same PARAMS)."""
        assert not fields, f"Wyoming has no such fields: {fields}"
        c = conn or self.client()
        if conn is None:
            await c.connect()
        try:
            try:
                await c.write_event(self.synthesize(text, voice))
            except ConnectionError:  # refused and closed before the event went out: the error is still readable
                pass
            return await wyoming_outcome(c, AudioStop)
        finally:
            if conn is None:
                await c.disconnect()

    async def begin(self, text: str, *, voice: Any = None, params: Mapping[str, Any] = PARAMS) -> InFlight:
        c = self.client()
        await c.connect()
        await c.write_event(self.synthesize(text, voice))
        return WyomingInFlight(c, AudioStop)

    async def start_and_feed(self, *texts: str) -> InFlight:
        c = self.client()
        await c.connect()
        await c.write_event(SynthesizeStart().event())
        for text in texts:
            await c.write_event(SynthesizeChunk(text=text).event())
        return WyomingInFlight(c, SynthesizeStopped)

    async def hold_connection(self) -> Held:
        c = await self.open_connection()
        return Held(c.disconnect)

    async def open_connection(self) -> AsyncTcpClient:
        """A connection the server admitted (it answered `describe`), for more requests later."""
        c = self.client()
        await c.connect()
        await c.write_event(Describe().event())
        answer = await c.read_event()
        assert answer is not None and Info.is_type(answer.type), answer
        return c


async def wyoming_outcome(c: AsyncTcpClient, last: type, events: list[Event] | None = None) -> Outcome:
    """Read until `last` (audio-stop, or synthesize-stopped for a stream), or an `error` and then the end of the
    connection (a refusal closes it)."""
    events = events if events is not None else []
    closed = False
    try:
        while True:
            event = await c.read_event()
            if event is None:
                closed = True
                break
            events.append(event)
            if Error.is_type(event.type):  # the connection closes next: read on to its end
                closed = await c.read_event() is None
                break
            if last.is_type(event.type):
                break
    except ConnectionError:
        closed = True
    audio = b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))
    errors = [Error.from_event(e) for e in events if Error.is_type(e.type)]
    types = [e.type for e in events]
    if not errors:
        done = bool(events) and last.is_type(events[-1].type)
        return Outcome("wyoming", audio=audio, reason="end" if done else None, closed=closed,
                       wire={"types": types})
    error = errors[0]
    return Outcome("wyoming", frozenset({error.code or ""}), audio=audio, reason="error", closed=closed,
                   field=named_field(error.text), message=error.text, wire={"types": types, "code": error.code})


class WyomingInFlight(InFlight):
    def __init__(self, c: AsyncTcpClient, last: type) -> None:
        self.c, self.last = c, last
        self.events: list[Event] = []

    async def first_audio(self) -> None:
        while not any(AudioChunk.is_type(e.type) for e in self.events):
            event = await self.c.read_event()
            assert event is not None and not Error.is_type(event.type), (event, [e.type for e in self.events])
            self.events.append(event)

    async def finish(self) -> Outcome:
        try:  # (first_audio stops at the first chunk: `last` is still to come)
            return await wyoming_outcome(self.c, self.last, self.events)
        finally:
            await self.c.disconnect()

    async def drop(self) -> None:
        await self.c.disconnect()  # as a closed Home Assistant connection


DOORS: dict[str, type[Door]] = {"websocket": WebSocketDoor, "http": HttpDoor, "wyoming": WyomingDoor}


def door(srv: ServerThread, name: str, key: str | None = None) -> Door:
    return DOORS[name](srv, key)
