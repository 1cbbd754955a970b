"""Approximate chunked EnCodec decoding (context + crossfade) and click-free joining of audio pieces.

`CrossfadeDecoder` decodes each chunk one-shot with `left_context` earlier frames in
front, keeps only the new frames' samples, and hides the seam with a crossfade:

    previous output  ....aaaaaaaa[held]                    held: last `crossfade` samples,
    this decode           [ctx ctx ctx|new new new new]          not yet emitted
                                 [xf]                      xf: this decode's version of the
    emitted          ....aaaaaaaa[mix][new new new  ][held']     held samples, faded in

Curve: a *linear raised-cosine* (fade-in w = (1 - cos(pi x)) / 2, fade-out 1 - w). The
gains sum to one, which is right when both sides are estimates of the same signal (as
in the decoder: highly correlated), because an equal-power fade (sin/cos, gains
summing to up to sqrt 2) would swell correlated audio by up to 3 dB mid-fade. For
unrelated pieces (independently generated segments) `curve="equal_power"` keeps the
loudness constant instead; both curves are smooth, so neither clicks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from streaming.codec_decode import as_codes, decode_codes_batch, model_device
from streaming.constants import N_FINE_CODEBOOKS, SAMPLES_PER_FRAME
from streaming.errors import ConfigError

if TYPE_CHECKING:
    from encodec import EncodecModel

logger = logging.getLogger(__name__)

CURVES = ("raised_cosine", "equal_power")


def fade_curves(n: int, curve: str = "raised_cosine") -> tuple[np.ndarray, np.ndarray]:
    """Fade-in and fade-out gains, float32 [n] each, sampled at the centres of n steps."""
    if curve not in CURVES:
        raise ConfigError(f"curve must be one of {CURVES}, got {curve!r}.")
    x = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    if curve == "raised_cosine":
        fade_in = 0.5 - 0.5 * np.cos(np.pi * x)
        fade_out = 1.0 - fade_in
    else:
        fade_in, fade_out = np.sin(0.5 * np.pi * x), np.cos(0.5 * np.pi * x)
    return fade_in.astype(np.float32), fade_out.astype(np.float32)


def crossfade_join(a: np.ndarray, b: np.ndarray, overlap: int, *, curve: str = "raised_cosine") -> np.ndarray:
    """Join 1-D audio a [Na] and b [Nb] over `overlap` shared samples -> [Na + Nb - overlap].

    The last `overlap` samples of a fade out while the first `overlap` of b fade in.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ConfigError(f"crossfade_join takes 1-D audio; got a{a.shape}, b{b.shape}.")
    if not 0 <= overlap <= min(len(a), len(b)):
        raise ConfigError(
            f"overlap must be in 0..min(len(a), len(b)) = 0..{min(len(a), len(b))}, got {overlap}."
        )
    if overlap == 0:
        return np.concatenate([a, b]).astype(np.float32, copy=False)
    fade_in, fade_out = fade_curves(overlap, curve)
    mixed = a[len(a) - overlap:] * fade_out + b[:overlap] * fade_in  # [overlap]
    return np.concatenate([a[: len(a) - overlap], mixed, b[overlap:]]).astype(np.float32, copy=False)


@dataclass
class JoinerState:
    """Audio held back by a SegmentJoiner until the next piece (or finish) arrives."""

    held: np.ndarray  # float32 [<= overlap], the last samples so far, not yet emitted


class SegmentJoiner:
    """Streaming `crossfade_join`: push independently generated pieces, get continuous audio.

    Each push emits everything except the last `overlap` samples, which wait to be
    crossfaded with the next piece's head. A piece shorter than the overlap is mixed
    over its own length.
    """

    def __init__(self, overlap: int, *, curve: str = "raised_cosine") -> None:
        if overlap < 0:
            raise ConfigError(f"overlap must be >= 0 samples, got {overlap}.")
        fade_curves(1, curve)  # validates the name
        self.overlap, self.curve = overlap, curve
        self.reset()

    def reset(self) -> None:
        """Forget held audio; the next piece starts a new stream."""
        self.state = JoinerState(held=np.zeros(0, dtype=np.float32))
        self._started = False

    def push(self, piece: np.ndarray) -> np.ndarray:
        """Add piece [N] (float) -> the samples now final."""
        piece = np.asarray(piece, dtype=np.float32)
        ov = min(self.overlap, len(self.state.held), len(piece)) if self._started else 0
        joined = crossfade_join(self.state.held, piece, ov, curve=self.curve)
        self._started = True
        return self._hold_tail(joined, self.overlap)

    def finish(self) -> np.ndarray:
        """End of stream -> the held tail; resets."""
        held = self.state.held
        self.reset()
        return held

    def _hold_tail(self, audio: np.ndarray, n: int) -> np.ndarray:
        keep = min(n, len(audio))
        self.state.held = audio[len(audio) - keep:]
        return audio[: len(audio) - keep]


@dataclass
class CrossfadeState:
    """One stream's codes history, undecoded codes and held audio."""

    context: torch.Tensor  # LongTensor [1, 8, <= left_context], last frames already decoded
    pending: torch.Tensor  # LongTensor [1, 8, n], received but not yet decoded
    held: np.ndarray  # float32 [<= crossfade], decoded but not yet emitted
    frames: int = 0  # frames decoded so far


class CrossfadeDecoder:
    """Chunked one-shot decoding with left context and a raised-cosine crossfade at each seam.

    Args:
        left_context: earlier frames decoded again in front of each chunk (warm-up).
        crossfade: samples blended at each seam; at most left_context * 320. Output lags
            the input by this many samples (they wait for the next chunk or flush).
        first_chunk, chunk: frames to collect before the first / each later decode
            (1: decode whatever each `decode` call brings).
    """

    def __init__(
        self,
        model: EncodecModel,
        *,
        left_context: int = 5,
        crossfade: int = 640,
        first_chunk: int = 1,
        chunk: int = 1,
    ) -> None:
        if left_context < 0:
            raise ConfigError(f"left_context must be >= 0 frames, got {left_context}.")
        if not 0 <= crossfade <= left_context * SAMPLES_PER_FRAME:
            raise ConfigError(
                f"crossfade must be in 0..left_context*{SAMPLES_PER_FRAME} = "
                f"0..{left_context * SAMPLES_PER_FRAME} samples, got {crossfade}; "
                "raise left_context or lower crossfade."
            )
        if first_chunk < 1 or chunk < 1:
            raise ConfigError(f"first_chunk and chunk must be >= 1 frame, got {first_chunk}, {chunk}.")
        self.model = model
        self.left_context, self.crossfade = left_context, crossfade
        self.first_chunk, self.chunk = first_chunk, chunk
        self.reset()

    def reset(self) -> None:
        """Forget the stream."""
        empty = torch.zeros(1, N_FINE_CODEBOOKS, 0, dtype=torch.long, device=model_device(self.model))
        self.state = CrossfadeState(context=empty, pending=empty, held=np.zeros(0, dtype=np.float32))

    def decode(self, codes_chunk: np.ndarray | torch.Tensor) -> np.ndarray:
        """codes_chunk [8, t] -> float32 PCM now final (length varies; all of it sums to T*320)."""
        if np.ndim(codes_chunk) != 2:
            raise ConfigError(f"codes_chunk must have shape [{N_FINE_CODEBOOKS}, t], got {tuple(codes_chunk.shape)}.")
        c = as_codes(codes_chunk, device=model_device(self.model), name="codes_chunk")  # [1, 8, t]
        st = self.state
        st.pending = torch.cat([st.pending, c], dim=-1)
        need = self.first_chunk if st.frames == 0 else self.chunk
        if st.pending.shape[-1] < need:
            return np.zeros(0, dtype=np.float32)
        return self._decode_pending()

    def flush(self) -> np.ndarray:
        """End of stream: decode what is pending, emit the held tail, reset."""
        out = self._decode_pending() if self.state.pending.shape[-1] else np.zeros(0, dtype=np.float32)
        out = np.concatenate([out, self.state.held])
        self.reset()
        return out

    def _decode_pending(self) -> np.ndarray:
        st = self.state
        n_ctx, t = st.context.shape[-1], st.pending.shape[-1]
        window = torch.cat([st.context, st.pending], dim=-1)  # [1, 8, n_ctx + t]
        audio = decode_codes_batch(self.model, window)[0]  # [(n_ctx + t) * 320]
        start = n_ctx * SAMPLES_PER_FRAME
        x = len(st.held)
        assert x <= start, (x, start)  # guaranteed by crossfade <= left_context * 320
        mixed = st.held
        if x:
            fade_in, fade_out = fade_curves(x)
            mixed = st.held * fade_out + audio[start - x: start] * fade_in  # [x]
        combined = np.concatenate([mixed, audio[start:]])
        keep = min(self.crossfade, len(combined))
        st.held = combined[len(combined) - keep:]
        st.context = window[..., max(0, window.shape[-1] - self.left_context):]
        st.pending = window[..., :0]
        st.frames += t
        return combined[: len(combined) - keep]
