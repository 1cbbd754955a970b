"""Write received audio to a file as it streams: 16-bit PCM WAV (stdlib `wave`) for PCM encodings, the
server's own bytes for compressed ones (an Ogg Opus or MP3 file needs no re-encoding)."""

from __future__ import annotations

import wave
from os import PathLike
from types import TracebackType
from typing import Protocol

import numpy as np

from .player import as_mono_float32

INT16_SCALE = 32767  # float 1.0 <-> int16 32767; -1.0 <-> -32767


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [n] in [-1, 1] (clipped) -> int16 [n], rounded to the nearest step."""
    x = np.clip(as_mono_float32(samples), -1.0, 1.0)
    return np.round(x * INT16_SCALE).astype("<i2")


class WavWriter:
    """Append float32 mono chunks to a 16-bit WAV; the header is finalised on `close()`."""

    def __init__(self, path: str | PathLike[str], sample_rate: int = 24_000) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate: expected a positive integer, got {sample_rate!r}")
        self.path = path
        self.samples_written = 0
        self._wav: wave.Wave_write | None = wave.open(str(path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)

    def write(self, samples: np.ndarray) -> None:
        """Append float samples [n] in [-1, 1]."""
        if self._wav is None:
            raise RuntimeError(f"write() after close() on {self.path}")
        pcm = float_to_pcm16(samples)
        self._wav.writeframes(pcm.tobytes())
        self.samples_written += pcm.size

    def close(self) -> None:
        """Finish the file; safe to call twice."""
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def write_wav(path: str | PathLike[str], samples: np.ndarray, sample_rate: int = 24_000) -> None:
    """Write float samples [n] in [-1, 1] to a 16-bit mono WAV."""
    with WavWriter(path, sample_rate) as w:
        w.write(samples)


def read_wav(path: str | PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a 16-bit mono WAV as (float32 [n] in [-1, 1], sample_rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(
                f"{path}: expected 16-bit mono, got {w.getnchannels()} channels of {8 * w.getsampwidth()} bits"
            )
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.astype(np.float32) / INT16_SCALE, w.getframerate()


class _Chunk(Protocol):
    samples: np.ndarray  # decoded PCM (empty for compressed encodings)
    data: bytes  # the bytes as received


class AudioFile(Protocol):
    """Where the CLI writes a request's audio chunk by chunk."""

    def write(self, chunk: _Chunk) -> None: ...

    def close(self) -> None: ...


class _WavFile:
    def __init__(self, path: str | PathLike[str], sample_rate: int) -> None:
        self._wav = WavWriter(path, sample_rate)

    def write(self, chunk: _Chunk) -> None:
        self._wav.write(chunk.samples)

    def close(self) -> None:
        self._wav.close()


class _RawFile:
    def __init__(self, path: str | PathLike[str]) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def write(self, chunk: _Chunk) -> None:
        self._file.write(chunk.data)
        self._file.flush()  # a file that grows as the audio arrives can be played while it is written

    def close(self) -> None:
        self._file.close()


def open_audio_file(path: str | PathLike[str], encoding: str, sample_rate: int) -> AudioFile:
    """A 16-bit WAV at `sample_rate` for PCM encodings (μ-law and A-law decoded), the bytes as sent for
    ogg_opus and mp3."""
    from protocol import COMPRESSED_ENCODINGS

    return _RawFile(path) if encoding in COMPRESSED_ENCODINGS else _WavFile(path, sample_rate)
