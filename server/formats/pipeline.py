"""`AudioPipeline`: time-stretch, resample and encode one request's audio, chunk by chunk, in order."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import numpy as np

from streaming.constants import SAMPLE_RATE

from .encoders import PCM_FORMATS, make_encoder
from .resample import Resampler
from .tempo import TimeStretch


@dataclass(frozen=True)
class Encoded:
    """What one `feed` or `finish` produced."""

    data: bytes  # bytes to send (may be empty: the encoder or the filters are holding audio)
    first_sample: int  # output-rate samples handed to the encoder before this call
    samples: int  # output-rate samples this call handed to the encoder


class AudioPipeline:
    """Bark's 24 kHz float audio -> `fmt` at `sample_rate`, optionally `speed` times faster.

    Not thread-safe by design: one request's pump calls it, one call at a time, in
    order (from a worker thread when `threaded`). `close()` may come from another
    thread while a call runs (a cancelled request); the call then closes on its way out.
    """

    def __init__(self, fmt: str, sample_rate: int = SAMPLE_RATE, *, speed: float = 1.0) -> None:
        self.fmt, self.sample_rate, self.speed = fmt, sample_rate, speed
        self._encoder = make_encoder(fmt, sample_rate)  # raises ValueError for an unknown format
        self._tempo = TimeStretch(SAMPLE_RATE, speed) if speed != 1.0 else None
        self._resampler = Resampler(SAMPLE_RATE, sample_rate)
        self.samples_out = 0  # output-rate samples handed to the encoder so far
        self._lock = threading.Lock()
        self._close_requested = False
        self._closed = False

    @property
    def threaded(self) -> bool:
        """True when a chunk costs more than a sample-format conversion: run it in a worker thread."""
        return self.fmt not in PCM_FORMATS or self.sample_rate != SAMPLE_RATE or self._tempo is not None

    def header(self) -> bytes:
        """Bytes that precede all audio (the WAV header); b"" for every other format."""
        return self._encoder.header()

    def feed(self, samples: np.ndarray) -> Encoded:
        """Take the next 24 kHz float samples; return the bytes they complete."""
        with self._lock:
            x = np.asarray(samples, dtype=np.float32)
            if self._tempo is not None:
                x = self._tempo.process(x)
            return self._encode(self._resampler.process(x), finish=False)

    def finish(self) -> Encoded:
        """After the last feed: everything the stages still hold, then the encoder's trailer."""
        with self._lock:
            x = self._tempo.finish() if self._tempo is not None else np.zeros(0, np.float32)
            x = self._resampler.process(x) if x.size else x
            x = np.concatenate([x, self._resampler.finish()])
            return self._encode(x, finish=True)

    def _encode(self, x: np.ndarray, *, finish: bool) -> Encoded:
        if self._closed:
            raise RuntimeError("AudioPipeline: used after close()")
        first = self.samples_out
        try:
            data = self._encoder.encode(x)
            if finish:
                data += self._encoder.finish()
        finally:
            if self._close_requested:
                self._close_now()
        self.samples_out += int(x.size)
        return Encoded(data, first, int(x.size))

    def close(self) -> None:
        """Release the encoder (idempotent); never blocks on a call in progress."""
        if self._lock.acquire(blocking=False):
            try:
                self._close_now()
            finally:
                self._lock.release()
        else:
            self._close_requested = True

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = True
            self._encoder.close()


async def convert(pipeline: AudioPipeline, samples: np.ndarray | None) -> Encoded:
    """Feed `samples` (None: finish) through `pipeline`, in a worker thread when that costs more than a
    sample-format conversion, so neither the event loop nor the engine thread does caller-sized work."""

    def call() -> Encoded:
        return pipeline.finish() if samples is None else pipeline.feed(samples)

    return await asyncio.to_thread(call) if pipeline.threaded else call()
