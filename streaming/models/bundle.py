"""The three Bark GPTs travel together as one `BarkModels` bundle."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fine_gpt import FineGPT, FineGPTConfig
from .gpt import GPT, GPTConfig


@dataclass(frozen=True)
class BarkShapes:
    """Configs of the text, coarse and fine models."""

    text: GPTConfig
    coarse: GPTConfig
    fine: FineGPTConfig


def bark_shapes(n_layer: int, n_head: int, n_embd: int) -> BarkShapes:
    """Bark's vocabularies with the given transformer size."""
    common = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, bias=True)
    return BarkShapes(
        text=GPTConfig(input_vocab_size=129_600, output_vocab_size=10_048, **common),
        coarse=GPTConfig(input_vocab_size=12_096, output_vocab_size=12_096, **common),
        fine=FineGPTConfig(input_vocab_size=1_056, output_vocab_size=1_056, **common),
    )


SHAPES = {
    "tiny": bark_shapes(n_layer=2, n_head=2, n_embd=64),  # fast tests
    "small": bark_shapes(n_layer=12, n_head=12, n_embd=768),  # Bark-small (text.pt, ...)
    "large": bark_shapes(n_layer=24, n_head=16, n_embd=1024),  # Bark (text_2.pt, ...)
}


@dataclass
class BarkModels:
    """Loaded models plus where they came from."""

    text: GPT
    coarse: GPT
    fine: FineGPT
    name: str  # model choice as given (e.g. "bark-small", "random-tiny", a path)

    @property
    def device(self) -> torch.device:
        return self.text.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text.transformer.wte.weight.dtype

    def to(self, device: torch.device | str, dtype: torch.dtype) -> BarkModels:
        for m in (self.text, self.coarse, self.fine):
            m.to(device=device, dtype=dtype).eval()
        return self


def build_models(shapes: BarkShapes, name: str, seed: int | None = None) -> BarkModels:
    """Fresh models of `shapes`; with `seed`, deterministic random weights."""
    gen_state = torch.random.get_rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        models = BarkModels(GPT(shapes.text), GPT(shapes.coarse), FineGPT(shapes.fine), name=name)
    finally:
        torch.random.set_rng_state(gen_state)
    for m in (models.text, models.coarse, models.fine):
        m.eval()
    return models
