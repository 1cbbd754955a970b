"""The frames the front-end process and the engine process exchange over their socketpair.

A frame is a 4-byte big-endian length, then that many bytes of msgpack: a map whose
key "t" names the frame. Numpy arrays travel as {"dtype", "shape", "data": raw bytes}.
Both sides refuse frames over MAX_FRAME_BYTES (a peer that sends one is broken: the
channel closes). Torch-free: the front end imports this.

    parent -> child                                  child -> parent
    load    {spec}                                   ready   {model_name, max_streams, max_queue, snap}
    submit  {id, req}          -> reply {id, stream, snap} | error    failed  {error: class name, message}
    feed    {id, s, text}      -> reply {id} | error                  reply   {id, [stream, snap] | error}
    flush   {id, s}            -> reply {id} | error                  audio   {s, sample, pcm, ts, sent}
    end     {id, s}            -> reply {id} | error                  span    {s, index, text, start, end}
    cancel / pause / resume {s}   (one-way)                           done    {s, reason, samples, stats, ...}
    stop    {}                    (one-way: stop the engine, exit)    snap    {snap}

`ts` on an audio frame is the child's `time.monotonic()` when the engine emitted the
chunk and `sent` when the writer thread encoded it for sending (CLOCK_MONOTONIC is one
clock for every process on Linux), for measuring what the process boundary adds. Errors travel as {"type": class name, "message", "field",
"retry_after_ms"} and are raised again as the same `streaming.errors` class.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import numpy as np

from streaming import errors
from streaming.events import AudioChunk, EngineSnapshot, Event, SegmentSpan, StreamDone, StreamStats
from streaming.params import SamplingParams, StreamPolicy
from streaming.voices import Voice

from .base import EngineInfo, EngineRequest

MAX_FRAME_BYTES = 64 * 1024 * 1024  # either side; a request's text and voice, or one audio chunk, are far below
HEADER = struct.Struct(">I")

# the streaming.errors classes a reply may raise again in the caller (anything else: RuntimeError)
ERROR_CLASSES: dict[str, type[errors.BarkStreamError]] = {
    cls.__name__: cls for cls in (errors.BarkStreamError, errors.ConfigError, errors.TextError,
                                  errors.VoiceError, errors.WeightsError)
}


class FrameTooLarge(ValueError):
    """A frame over MAX_FRAME_BYTES (to send: refused before it is sent; received: the peer is broken)."""


class ChannelError(RuntimeError):
    """The peer sent something that is not a frame of this channel."""


# ----------------------------------------------------------------------------- framing


def encode_frame(message: dict[str, Any], max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One message -> length prefix + msgpack body (FrameTooLarge over `max_bytes`)."""
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_bytes:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds the channel's {max_bytes}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_bytes: int = MAX_FRAME_BYTES) -> int:
    """The body length a 4-byte header announces (FrameTooLarge over `max_bytes`)."""
    (n,) = HEADER.unpack(header)
    if n > max_bytes:
        raise FrameTooLarge(f"peer announced a frame of {n} bytes; the channel allows {max_bytes}")
    return n


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's msgpack body -> its message (ChannelError when it is not one)."""
    try:
        message = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated classes for bad input
        raise ChannelError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ChannelError("a frame must be a map with a string 't'")
    return message


# ----------------------------------------------------------------------------- arrays


def pack_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def unpack_array(packed: dict[str, Any], *, writable: bool = True) -> np.ndarray:
    array = np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])
    return array.copy() if writable else array


# ----------------------------------------------------------------------------- requests


def encode_request(request: EngineRequest) -> dict[str, Any]:
    voice = request.voice
    return {
        "text": request.text,
        "voice": None if voice is None else {"name": voice.name, "semantic": pack_array(voice.semantic),
                                             "coarse": pack_array(voice.coarse), "fine": pack_array(voice.fine)},
        "sampling": dataclasses.asdict(request.sampling),
        "policy": dataclasses.asdict(request.policy),
        "request_id": request.request_id,
        "owner": request.owner,
    }


def decode_voice(packed: dict[str, Any] | None) -> Voice | None:
    """The parent's already validated Voice again (read-only arrays, as load_voice makes them)."""
    if packed is None:
        return None
    arrays = []
    for key in ("semantic", "coarse", "fine"):
        array = unpack_array(packed[key])
        array.setflags(write=False)
        arrays.append(array)
    return Voice(packed["name"], *arrays)


def decode_request(packed: dict[str, Any]) -> EngineRequest:
    """ConfigError if the parameters are out of range (they were checked in the parent already)."""
    return EngineRequest(text=packed["text"], voice=decode_voice(packed["voice"]),
                         sampling=SamplingParams(**packed["sampling"]), policy=StreamPolicy(**packed["policy"]),
                         request_id=packed["request_id"], owner=packed["owner"])


# ----------------------------------------------------------------------------- events


def encode_stats(stats: StreamStats) -> dict[str, Any]:
    return {"ttfa_s": stats.ttfa_s, "total_s": stats.total_s, "queued_s": stats.queued_s,
            "stage_s": dict(stats.stage_s), "tokens": dict(stats.tokens), "samples": stats.samples,
            "first_s": dict(stats.first_s), "semantic_at_first_window": stats.semantic_at_first_window}


def decode_stats(packed: dict[str, Any]) -> StreamStats:
    return StreamStats(**packed)


def encode_event(stream: int, event: Event, ts: float, sent: float | None = None) -> dict[str, Any]:
    """One engine event of stream `stream`; `ts`: the child's time.monotonic() at emit, `sent`: at encoding."""
    if isinstance(event, AudioChunk):
        return {"t": "audio", "s": stream, "sample": event.sample, "pcm": pack_array(event.samples), "ts": ts,
                "sent": ts if sent is None else sent}
    if isinstance(event, SegmentSpan):
        return {"t": "span", "s": stream, "index": event.index, "text": event.text,
                "start": event.start_sample, "end": event.end_sample}
    if isinstance(event, StreamDone):
        # tokens (SpeechRequest.return_tokens) are never asked for through a link: EngineRequest has no such field
        return {"t": "done", "s": stream, "reason": event.reason, "samples": event.samples,
                "stats": encode_stats(event.stats), "error_code": event.error_code, "error": event.error}
    raise TypeError(f"not an engine event: {type(event).__name__}")


EVENT_TYPES = frozenset({"audio", "span", "done"})


def decode_event(message: dict[str, Any]) -> Event:
    kind = message["t"]
    if kind == "audio":
        return AudioChunk(sample=message["sample"], samples=unpack_array(message["pcm"]))
    if kind == "span":
        return SegmentSpan(index=message["index"], text=message["text"], start_sample=message["start"],
                           end_sample=message["end"])
    if kind == "done":
        return StreamDone(reason=message["reason"], samples=message["samples"], stats=decode_stats(message["stats"]),
                          error_code=message["error_code"], error=message["error"])
    raise ChannelError(f"not an event frame: {kind!r}")


# ----------------------------------------------------------------------------- snapshots, info, errors


def encode_snapshot(snap: EngineSnapshot) -> dict[str, int]:
    return dataclasses.asdict(snap)


def decode_snapshot(packed: dict[str, int]) -> EngineSnapshot:
    return EngineSnapshot(**packed)


def encode_info(info: EngineInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def decode_info(packed: dict[str, Any]) -> EngineInfo:
    return EngineInfo(packed["model_name"], packed["max_streams"], packed["max_queue"])


def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception raised in the child for a call, to raise again in the parent."""
    return {"type": type(exc).__name__, "message": str(exc), "field": getattr(exc, "field", None),
            "retry_after_ms": getattr(exc, "retry_after_ms", None)}


def decode_error(packed: dict[str, Any]) -> Exception:
    """The same streaming.errors class with the same message; other failures as RuntimeError."""
    kind, message = packed.get("type"), packed.get("message", "")
    if kind == "EngineOverloaded":
        return errors.EngineOverloaded(message, retry_after_ms=int(packed.get("retry_after_ms") or 0))
    cls = ERROR_CLASSES.get(kind)
    if cls is not None:
        return cls(message, field=packed.get("field"))
    return RuntimeError(f"engine process: {kind}: {message}")
