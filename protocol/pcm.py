"""PCM sample encodings of `audio` messages: float samples <-> little-endian bytes."""

from __future__ import annotations

import numpy as np

from .base import ENCODINGS
from .errors import ProtocolError

_S16_SCALE = 32767.0


def pcm_encode(samples: np.ndarray, encoding: str) -> bytes:
    """Mono float samples [T] in [-1, 1] → little-endian PCM bytes for an `audio` message.

    pcm_s16le clips to [-1, 1] (NaN → 0), scales by 32767 and rounds.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"pcm_encode: samples must be 1-D [T], got shape {samples.shape}")
    if encoding == "pcm_f32le":
        return samples.astype("<f4", copy=False).tobytes()
    if encoding == "pcm_s16le":
        clean = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
        return np.rint(np.clip(clean, -1.0, 1.0) * _S16_SCALE).astype("<i2").tobytes()
    raise ValueError(f"pcm_encode: encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")


def pcm_decode(data: bytes, encoding: str) -> np.ndarray:
    """Little-endian PCM bytes → float32 samples [T] (s16 divided by 32767)."""
    width = {"pcm_s16le": 2, "pcm_f32le": 4}.get(encoding)
    if width is None:
        raise ValueError(f"pcm_decode: encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    if len(data) % width:
        raise ProtocolError("bad_field", f"pcm: {len(data)} bytes is not a whole number of {width}-byte samples")
    if encoding == "pcm_s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(_S16_SCALE)
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
