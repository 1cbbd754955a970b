"""Token sampling as Suno's Bark does it: top-p, then top-k, then temperature.

`temp=None` or `top_k=1` is greedy (argmax); that is the contract under which our
tokens must equal the reference's exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one stream; a fresh random seed when `seed` is None."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits: float32 [V] on cpu -> a copy with filtered entries set to -inf."""
    logits = logits.clone()
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[1:] = remove[:-1].clone()  # keep the token that crosses top_p
        remove[0] = False
        logits[order[remove]] = -float("inf")
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits[logits < kth] = -float("inf")
    return logits


def sample(
    logits: torch.Tensor,
    *,
    temp: float | None,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> tuple[int, torch.Tensor | None]:
    """Draw one index from logits [V] (float32, cpu).

    Returns (index, probs) where probs [V] is the distribution sampled from, or
    None on the greedy path (argmax; then the chosen index has probability 1).
    """
    if temp is None or top_k == 1:
        return int(torch.argmax(logits)), None
    probs = F.softmax(filter_logits(logits, top_k, top_p) / temp, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator)), probs
