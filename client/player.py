"""Play streamed PCM through PortAudio (sounddevice) behind a small jitter buffer.

The producer (the network) calls `write()` as audio frames arrive; PortAudio's
callback thread pulls fixed-size blocks out of the buffer. Playback starts once
`prebuffer_ms` of audio is queued (or the producer calls `finish()`); when the
buffer runs dry mid-stream the callback outputs silence, counts one underrun for
the dry episode and waits for the prebuffer to refill before resuming:

    write() ──► [block][block][block] ──► callback(out[frames]) ──► PortAudio
                 JitterBuffer (lock)        audio, or silence while
                                            prebuffering / dry / ended
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

_HINT = "use --no-play --output out.wav to write a file instead"
LATENCIES = ("low", "high")


class PlaybackUnavailable(RuntimeError):
    """PortAudio or an audio output device is missing; the message says what to do."""


@dataclass(frozen=True)
class PlayerConfig:
    """How to open the output stream and how much audio to hold before playing."""

    sample_rate: int = 24_000  # Hz; Bark's EnCodec rate
    prebuffer_ms: float = 150.0  # audio queued before playback starts or resumes after an underrun
    blocksize: int = 0  # frames per callback; 0 lets PortAudio choose (lowest latency)
    device: int | str | None = None  # PortAudio output device index or name; None = default
    latency: str | float = "low"  # "low", "high" or seconds; PortAudio's suggested output latency

    def __post_init__(self) -> None:
        if isinstance(self.sample_rate, bool) or not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise ValueError(f"sample_rate: expected a positive integer, got {self.sample_rate!r}")
        if isinstance(self.prebuffer_ms, bool) or not isinstance(self.prebuffer_ms, (int, float)):
            raise ValueError(f"prebuffer_ms: expected a number, got {self.prebuffer_ms!r}")
        if not 0 <= self.prebuffer_ms <= 60_000:
            raise ValueError(f"prebuffer_ms: {self.prebuffer_ms!r} is outside [0, 60000]")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 0:
            raise ValueError(f"blocksize: expected an integer >= 0, got {self.blocksize!r}")
        if isinstance(self.latency, str) and self.latency not in LATENCIES:
            raise ValueError(f"latency: {self.latency!r} is not one of {', '.join(LATENCIES)} or a number of seconds")
        if not isinstance(self.latency, str) and not (isinstance(self.latency, (int, float)) and self.latency > 0):
            raise ValueError(f"latency: expected 'low', 'high' or seconds > 0, got {self.latency!r}")

    @property
    def prebuffer_samples(self) -> int:
        return round(self.prebuffer_ms * self.sample_rate / 1000)


@dataclass(frozen=True)
class PlayerStats:
    """A snapshot of what the player has done so far."""

    underruns: int  # dry episodes mid-stream (the initial prebuffer is not one)
    underrun_ms: float  # silence output during those episodes, in device time
    played_samples: int  # real samples handed to PortAudio (inserted silence excluded)
    first_play_time: float | None  # time.monotonic() when the first real sample was handed over


@dataclass
class _BufferState:
    """The jitter buffer's mutable state; guarded by `JitterBuffer._cond`."""

    blocks: deque[np.ndarray] = field(default_factory=deque)  # float32 [n] each
    head: int = 0  # samples of blocks[0] already handed out
    queued: int = 0  # samples written and not yet handed out
    finished: bool = False  # the producer will write no more
    playing: bool = False  # False while prebuffering (at start and after an underrun)
    dry: bool = False  # inside an underrun episode
    ended: bool = False  # finished and every sample handed out
    underruns: int = 0
    underrun_samples: int = 0
    played_samples: int = 0
    first_play_time: float | None = None


class JitterBuffer:
    """Thread-safe FIFO of float32 samples with prebuffering and underrun accounting."""

    def __init__(self, prebuffer_samples: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        assert prebuffer_samples >= 0
        self.prebuffer_samples = prebuffer_samples
        self._clock = clock
        self._cond = threading.Condition()
        self._s = _BufferState()

    def push(self, samples: np.ndarray) -> None:
        """Queue `samples` (float32 [n]); raises RuntimeError after `finish()`."""
        with self._cond:
            if self._s.finished:
                raise RuntimeError("write() after finish(): the stream was declared complete")
            if samples.size:
                self._s.blocks.append(samples)
                self._s.queued += samples.size

    def finish(self) -> None:
        """Declare that no more audio will come; what is queued still plays."""
        with self._cond:
            self._s.finished = True
            self._cond.notify_all()

    def fill(self, out: np.ndarray) -> bool:
        """Fill `out` (float32 [frames]) with audio or silence; True once everything has played."""
        s = self._s
        with self._cond:
            if not s.playing and (s.queued >= max(1, self.prebuffer_samples) or s.finished):
                s.playing, s.dry = True, False
            if s.ended or not s.playing:
                out[:] = 0.0
                s.underrun_samples += out.size if s.dry else 0
                return s.ended
            n = self._take(out)
            out[n:] = 0.0
            if n and s.first_play_time is None:
                s.first_play_time = self._clock()
            s.played_samples += n
            if n < out.size:
                self._ran_dry(out.size - n)
            return s.ended

    def _take(self, out: np.ndarray) -> int:
        s, n = self._s, 0
        while n < out.size and s.blocks:
            block = s.blocks[0]
            k = min(out.size - n, block.size - s.head)
            out[n : n + k] = block[s.head : s.head + k]
            n, s.head = n + k, s.head + k
            if s.head == block.size:
                s.blocks.popleft()
                s.head = 0
        s.queued -= n
        return n

    def _ran_dry(self, silence: int) -> None:
        s = self._s
        if s.finished:
            s.ended = True
        else:
            s.underruns += 1
            s.underrun_samples += silence
            s.playing, s.dry = False, True
            log.debug("underrun %d after %d samples played", s.underruns, s.played_samples)
        self._cond.notify_all()

    def wait_dry(self, timeout: float | None) -> bool:
        """Block until the buffer has run dry (an underrun, or the end); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._s.dry or self._s.ended, timeout)

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._s.ended

    def stats(self, sample_rate: int) -> PlayerStats:
        with self._cond:
            s = self._s
            return PlayerStats(s.underruns, s.underrun_samples * 1000 / sample_rate, s.played_samples, s.first_play_time)


def _load_sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio library into `PlaybackUnavailable`."""
    try:
        import sounddevice
    except ImportError as e:
        raise PlaybackUnavailable(f"cannot play audio: {e} (pip install sounddevice); {_HINT}") from e
    except OSError as e:  # sounddevice raises OSError when libportaudio is absent
        raise PlaybackUnavailable(
            f"cannot play audio: {e} (Debian/Ubuntu: apt-get install libportaudio2); {_HINT}"
        ) from e
    return sounddevice


def _check_output_device(sd: Any, device: int | str | None) -> None:
    """Raise `PlaybackUnavailable` unless PortAudio knows an output device `device` (None = default)."""
    try:
        sd.query_devices(device, kind="output")
    except (sd.PortAudioError, ValueError) as e:  # PortAudioError: none at all; ValueError: no match
        what = "no audio output device found" if device is None else f"no output device {device!r} ({_one_line(e)})"
        raise PlaybackUnavailable(f"cannot play audio: {what}; {_HINT}") from e


def as_mono_float32(samples: np.ndarray) -> np.ndarray:
    """Return `samples` ([n] or [n, 1], floating point) as a contiguous float32 [n] array."""
    a = np.asarray(samples)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"samples: expected mono audio of shape [n] or [n, 1], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"samples: expected float samples in [-1, 1], got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


class Player:
    """A float32 mono PortAudio output stream fed from a `JitterBuffer`.

    Usage: `start()`, then `write()` as audio arrives, `finish()`, `wait()`, `close()`;
    or `with Player(cfg) as p: ...` (start on enter, close on exit).
    """

    def __init__(self, config: PlayerConfig | None = None) -> None:
        self.config = config or PlayerConfig()
        self._buffer = JitterBuffer(self.config.prebuffer_samples)
        self._stream: Any = None
        self._stopped = threading.Event()  # set by PortAudio once the stream has stopped
        self._sd: Any = None
        self._closed = False
        self._latency: float | None = None  # the open stream's output latency, seconds

    def start(self) -> None:
        """Open the output device and start the stream (silent until the prebuffer fills)."""
        if self._closed:
            raise RuntimeError("start() after close()")
        if self._stream is not None:
            return
        self._sd = _load_sounddevice()
        cfg = self.config
        _check_output_device(self._sd, cfg.device)
        stream = None
        try:
            stream = self._sd.OutputStream(
                samplerate=cfg.sample_rate,
                blocksize=cfg.blocksize,
                device=cfg.device,
                channels=1,
                dtype="float32",
                latency=cfg.latency,
                callback=self._callback,
                finished_callback=self._stopped.set,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as e:
            if stream is not None:
                stream.close()
            raise PlaybackUnavailable(f"cannot open the audio output device: {_one_line(e)}; {_HINT}") from e
        self._stream, self._latency = stream, float(stream.latency)
        log.debug("output stream started: %s Hz, blocksize %s, latency %.3f s",
                  cfg.sample_rate, stream.blocksize, self._latency)

    def _callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Runs on PortAudio's thread. outdata: float32 [frames, 1]
        if status.output_underflow:
            log.debug("PortAudio output underflow (device xrun)")
        if self._buffer.fill(outdata[:, 0]):
            raise self._sd.CallbackStop

    def write(self, samples: np.ndarray) -> None:
        """Queue float samples ([n] or [n, 1], in [-1, 1]) for playback."""
        self._buffer.push(as_mono_float32(samples))

    def finish(self) -> None:
        """Say that no more audio will be written; queued audio still plays."""
        self._buffer.finish()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `finish()` was called and all audio has played; False on timeout."""
        if self._stream is None:
            raise RuntimeError("wait() before start(): nothing is playing")
        return self._stopped.wait(timeout) and self._buffer.ended

    def wait_dry(self, timeout: float | None = None) -> bool:
        """Block until the buffer has run dry (an underrun, or the end); False on timeout."""
        return self._buffer.wait_dry(timeout)

    def close(self) -> None:
        """Stop playback at once and release the device; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.abort()
            stream.close()

    @property
    def stats(self) -> PlayerStats:
        return self._buffer.stats(self.config.sample_rate)

    @property
    def output_latency(self) -> float | None:
        """PortAudio's estimate of the seconds from the callback to the speaker; None before start()."""
        return self._latency

    def __enter__(self) -> Player:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
