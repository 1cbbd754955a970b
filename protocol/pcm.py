"""PCM sample encodings of `audio` messages: float samples <-> little-endian or G.711 bytes.

pcm_s16le, pcm_mulaw and pcm_alaw all start from the same int16 signal (clip to
[-1, 1], NaN -> 0, scale by 32767, round); μ-law and A-law then compress it per
G.711 (`protocol.g711`). Decoding divides int16 by 32767. pcm_f32le is the float
signal as it is. The compressed encodings (ogg_opus, mp3) are not sample formats:
the server encodes them whole-stream (server/formats), and clients decode them
with a media library.
"""

from __future__ import annotations

import numpy as np

from streaming.errors import ErrorCode

from .base import BYTES_PER_SAMPLE, PCM_ENCODINGS
from .errors import ProtocolError
from .g711 import alaw_decode, alaw_encode, mulaw_decode, mulaw_encode

_S16_SCALE = 32767.0


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    """float [T] -> int16 [T]: clipped to [-1, 1] (NaN -> 0), times 32767, rounded."""
    clean = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.rint(np.clip(clean, -1.0, 1.0) * _S16_SCALE).astype("<i2")


def pcm_encode(samples: np.ndarray, encoding: str) -> bytes:
    """Mono float samples [T] in [-1, 1] → the bytes of an `audio` message in a PCM encoding."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"pcm_encode: samples must be 1-D [T], got shape {samples.shape}")
    if encoding == "pcm_f32le":
        return samples.astype("<f4", copy=False).tobytes()
    if encoding == "pcm_s16le":
        return float_to_s16(samples).tobytes()
    if encoding == "pcm_mulaw":
        return mulaw_encode(float_to_s16(samples)).tobytes()
    if encoding == "pcm_alaw":
        return alaw_encode(float_to_s16(samples)).tobytes()
    raise ValueError(f"pcm_encode: encoding {encoding!r} is not one of {', '.join(PCM_ENCODINGS)}")


def pcm_decode(data: bytes, encoding: str) -> np.ndarray:
    """The bytes of an `audio` message in a PCM encoding → float32 samples [T] (int16 / 32767)."""
    width = BYTES_PER_SAMPLE.get(encoding)
    if width is None:
        raise ValueError(f"pcm_decode: encoding {encoding!r} is not one of {', '.join(PCM_ENCODINGS)}")
    if len(data) % width:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"pcm: {len(data)} bytes is not a whole number of {width}-byte samples")
    if encoding == "pcm_f32le":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if encoding == "pcm_s16le":
        pcm16 = np.frombuffer(data, dtype="<i2")
    else:
        codes = np.frombuffer(data, dtype=np.uint8)
        pcm16 = mulaw_decode(codes) if encoding == "pcm_mulaw" else alaw_decode(codes)
    return pcm16.astype(np.float32) / np.float32(_S16_SCALE)
