"""Tiny random Bark models written to disk in both checkpoint layouts, for the reference tests.

`write_suno_tiny(dir)` saves seeded `random-tiny` weights as Suno's `text.pt`,
`coarse.pt`, `fine.pt`; `write_transformers_tiny(dir)` saves a seeded tiny
transformers `BarkModel` (real vocabularies, hidden 64, 2 layers, 2 heads, a
tiny EnCodec) with `save_pretrained`. Both are loadable by `load_models(dir)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streaming.checkpoints import save_suno_dir
from streaming.encodec_compat import ensure_torchaudio
from streaming.models.bundle import SHAPES, BarkModels, build_models

ensure_torchaudio()

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = REPO_ROOT / "tests" / "data" / "tokenizer" / "vocab.txt"  # a 401-token BERT vocabulary
TINY_SEED = 1234  # weights of every tiny model in these tests


def tiny_models(seed: int = TINY_SEED) -> BarkModels:
    """Seeded `random-tiny` models (2 layers, 2 heads, 64 wide, Bark's vocabularies)."""
    return build_models(SHAPES["tiny"], name="random-tiny", seed=seed)


def write_suno_tiny(directory: Path, seed: int = TINY_SEED, size: str = "small") -> BarkModels:
    """Write seeded tiny models in Suno's layout into `directory`; returns the models written."""
    models = tiny_models(seed)
    save_suno_dir(models, directory, size=size)
    return models


def transformers_tiny_config():
    """A transformers BarkConfig: Bark's vocabularies, hidden 64, 2 layers, 2 heads, a tiny codec."""
    from transformers import BarkCoarseConfig, BarkConfig, BarkFineConfig, BarkSemanticConfig, EncodecConfig

    common = dict(hidden_size=64, num_layers=2, num_heads=2, block_size=1024, bias=True)
    semantic = BarkSemanticConfig(input_vocab_size=129_600, output_vocab_size=10_048, **common)
    coarse = BarkCoarseConfig(input_vocab_size=12_096, output_vocab_size=12_096, **common)
    fine = BarkFineConfig(input_vocab_size=1_056, output_vocab_size=1_056, n_codes_total=8, n_codes_given=1, **common)
    codec = EncodecConfig(num_filters=4, hidden_size=16, codebook_dim=16, upsampling_ratios=[2, 2], num_lstm_layers=1)
    return BarkConfig(
        semantic_config=semantic.to_dict(),
        coarse_acoustics_config=coarse.to_dict(),
        fine_acoustics_config=fine.to_dict(),
        codec_config=codec.to_dict(),
    )


def write_transformers_tiny(directory: Path, seed: int = TINY_SEED):
    """save_pretrained a seeded tiny transformers BarkModel into `directory`; returns the model (eval)."""
    from transformers import BarkModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BarkModel(transformers_tiny_config())
    model.save_pretrained(directory)
    return model.eval()


def random_coarse(n_frames: int, seed: int) -> np.ndarray:
    """Random coarse codes int64 [2, n_frames] in 0..1023."""
    return np.random.default_rng(seed).integers(0, 1024, (2, n_frames)).astype(np.int64)
