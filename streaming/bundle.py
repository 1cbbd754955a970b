"""Build a ready-to-start Engine from command-line style choices."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .codec import load_codec
from .engine import Engine, EngineConfig
from .models.quant import quantize_models
from .tokenizer import load_tokenizer
from .weights import load_models

logger = logging.getLogger(__name__)


def load_engine(
    model: str = "bark-small",
    *,
    device: str = "auto",
    dtype: str = "auto",
    codec: str = "pretrained",
    codec_dtype: str = "auto",
    tokenizer: str | Path | None = None,
    voices_dir: str | Path | None = None,
    config: EngineConfig | None = None,
    local_files_only: bool = False,
    threads: int | None = None,
    quantize: str = "none",
) -> Engine:
    """Models + codec + tokenizer -> an Engine (not started).

    `quantize` "int8" stores the text and coarse GPTs' linear layers as int8 (CPU only).
    `codec` is "pretrained", "random" or a state-dict path, decoded in `codec_dtype`
    ("auto" = fp32: half precision is opt-in, see codec.CODEC_DTYPES); `tokenizer` a
    local directory with vocab.txt or a hub repo (default bert-base-multilingual-cased).
    """
    if threads:
        torch.set_num_threads(threads)
    models = quantize_models(load_models(model, device=device, dtype=dtype, local_files_only=local_files_only),
                             quantize)
    codec_model = load_codec(codec, device=models.device, dtype=codec_dtype)
    tok = load_tokenizer(tokenizer, local_files_only=local_files_only)
    return Engine(models, codec_model, tok, config or EngineConfig(),
                  voices_dir=None if voices_dir is None else Path(voices_dir))
