"""G.711 μ-law and A-law (ITU-T G.711, 1988): 16-bit linear PCM <-> one byte per sample, in numpy.

The same arithmetic as the reference C code that accompanies the recommendation
(Sun Microsystems' g711.c, which ffmpeg's pcm_mulaw/pcm_alaw tables also follow):

- μ-law works on 14-bit magnitudes (the int16 value >> 2), adds the bias 33,
  finds the segment (0-7) and keeps 4 mantissa bits; the byte is inverted.
- A-law works on 13-bit magnitudes (the int16 value >> 3), segments 0-7 with
  4 mantissa bits; even bits are inverted (XOR 0x55) and the sign bit is 1 for >= 0.

Decoding gives the middle of each quantisation interval, scaled back to int16.
Encoding is vectorised: no Python loop over samples.
"""

from __future__ import annotations

import numpy as np

_ULAW_BIAS = 0x84  # 132: the bias of the 16-bit formulation (33 << 2)
_ULAW_CLIP = 8159  # largest 14-bit magnitude μ-law represents
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _as_int32(pcm: np.ndarray) -> np.ndarray:
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise ValueError(f"G.711: expected int16 samples, got {pcm.dtype}")
    return pcm.astype(np.int32)


def mulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """int16 [n] -> μ-law bytes uint8 [n]."""
    x = _as_int32(pcm) >> 2  # 14-bit
    negative = x < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.where(negative, -x, x), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, magnitude)  # first segment whose end >= magnitude
    mantissa = (magnitude >> (seg + 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """μ-law bytes uint8 [n] -> int16 [n]."""
    u = ~np.asarray(codes, dtype=np.uint8).astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    """int16 [n] -> A-law bytes uint8 [n]."""
    x = _as_int32(pcm) >> 3  # 13-bit
    negative = x < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -x - 1, x)
    seg = np.searchsorted(_SEG_AEND, magnitude)
    mantissa = np.where(seg < 2, magnitude >> 1, magnitude >> np.maximum(seg, 1)) & 0xF
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mantissa)
    return (code ^ mask).astype(np.uint8)


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    """A-law bytes uint8 [n] -> int16 [n]."""
    a = np.asarray(codes, dtype=np.uint8).astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)
