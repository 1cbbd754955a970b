"""The last stage of a pipeline: float samples at the output rate -> bytes, streamed.

- PCM sample formats (`protocol.pcm_encode`): s16le, f32le, G.711 μ-law and A-law.
- `wav`: a 44-byte header whose RIFF and data sizes are 0xFFFFFFFF ("length not
  known yet": ffmpeg, libsndfile and Python's `wave` read such a file to its
  end), then s16le samples. The header goes out before any audio.
- Compressed formats through PyAV (libavcodec/libavformat): Ogg Opus, MP3, AAC
  in ADTS frames, FLAC. Each container writes to an in-memory sink that is
  emptied after every call, so the bytes leave as soon as the encoder produces
  them; concatenated, they are one valid file. The muxers are set up for a
  stream nobody can seek back into: no Xing/LAME header to patch in MP3, a FLAC
  STREAMINFO whose total-samples field stays 0 (= unknown, per the FLAC spec),
  Ogg pages of at most 20 ms so a chunk's audio is not held back waiting for a page to fill.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import av
import numpy as np

from protocol import PCM_ENCODINGS, pcm_encode
from protocol.pcm import float_to_s16

PCM_FORMATS = (*PCM_ENCODINGS, "wav")  # formats with no codec state: each chunk is encoded on its own


@dataclass(frozen=True)
class Container:
    """How PyAV writes one compressed format."""

    muxer: str  # libavformat format name
    codec: str  # libavcodec encoder
    bit_rate: int | None  # bits per second; None = the encoder's default (lossless FLAC)
    mime: str
    options: dict[str, str] = field(default_factory=dict)  # muxer options


CONTAINERS: dict[str, Container] = {
    "ogg_opus": Container("ogg", "libopus", 32_000, "audio/ogg", {"page_duration": "20000"}),
    "mp3": Container("mp3", "libmp3lame", 64_000, "audio/mpeg", {"write_xing": "0", "id3v2_version": "0"}),
    "aac": Container("adts", "aac", 64_000, "audio/aac"),
    "flac": Container("flac", "flac", None, "audio/flac"),
}
FORMATS = (*PCM_FORMATS, *CONTAINERS)
MIME = {"pcm_s16le": "audio/pcm", "pcm_f32le": "audio/pcm", "pcm_mulaw": "audio/basic",
        "pcm_alaw": "audio/x-alaw-basic", "wav": "audio/wav", **{k: c.mime for k, c in CONTAINERS.items()}}


def wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (both sizes 0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, 2 * sample_rate, 2, 16)  # PCM, mono, rate, byte rate, align, bits
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + \
        b"data" + struct.pack("<I", unknown)


class SampleEncoder:
    """A PCM sample format (or WAV, which adds a header): stateless per chunk."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.fmt, self.sample_rate = fmt, sample_rate
        self._encoding = "pcm_s16le" if fmt == "wav" else fmt

    def header(self) -> bytes:
        return wav_header(self.sample_rate) if self.fmt == "wav" else b""

    def encode(self, samples: np.ndarray) -> bytes:
        return pcm_encode(samples, self._encoding) if samples.size else b""

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _Sink:
    """A write-only file object for libavformat: collects bytes until `take()`."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


class ContainerEncoder:
    """A compressed format through PyAV; opened on the first audio, so construction costs nothing."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.fmt, self.sample_rate = fmt, sample_rate
        self.spec = CONTAINERS[fmt]
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        self._stream: av.audio.stream.AudioStream | None = None
        self._pts = 0
        self._closed = False

    def header(self) -> bytes:
        return b""

    def _open(self) -> av.audio.stream.AudioStream:
        if self._stream is None:
            self._container = av.open(self._sink, "w", format=self.spec.muxer, options=self.spec.options)
            stream = self._container.add_stream(self.spec.codec, rate=self.sample_rate)
            stream.layout = "mono"
            if self.spec.bit_rate is not None:
                stream.bit_rate = self.spec.bit_rate
            self._stream = stream
        return self._stream

    def encode(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:
            return b""
        stream = self._open()
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None, :], format="flt",
                                           layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._pts
        self._pts += samples.size
        assert self._container is not None
        for packet in stream.encode(frame):  # PyAV converts to the codec's sample format and frame size
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and write the trailer: the last bytes of the file."""
        stream = self._open()  # a request without audio still gets a valid (empty) file
        assert self._container is not None
        for packet in stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._closed = True
        return self._sink.take()

    def close(self) -> None:
        if self._container is not None and not self._closed:
            self._closed = True
            try:
                self._container.close()
            except av.FFmpegError:  # a half-written stream nobody will read
                pass


def make_encoder(fmt: str, sample_rate: int) -> SampleEncoder | ContainerEncoder:
    if fmt in CONTAINERS:
        return ContainerEncoder(fmt, sample_rate)
    if fmt in PCM_FORMATS:
        return SampleEncoder(fmt, sample_rate)
    raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
