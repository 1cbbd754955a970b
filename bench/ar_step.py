"""Time per autoregressive step against its floor (the same linear layers alone).

    python bench/ar_step.py [--shape small|large] [--batch 1 8]

A decode step of Bark's causal GPT is memory bound: every weight is read once.
The floor is those reads and nothing else: the step's Linear layers (c_attn,
c_proj, c_fc, c_proj per layer, and lm_head) applied to a [B, C] input. The
ratio step / floor says how much time goes to everything else (attention over
the cache, layer norms, embedding, Python).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import machine, median_time
from streaming.models.bundle import SHAPES, build_models


def floor_fn(model, x):
    def run():
        with torch.inference_mode():
            for block in model.transformer.h:
                F.linear(x, block.attn.c_attn.weight, block.attn.c_attn.bias)
                F.linear(x, block.attn.c_proj.weight, block.attn.c_proj.bias)
                h = F.linear(x, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
                F.linear(h, block.mlp.c_proj.weight, block.mlp.c_proj.bias)
            F.linear(x, model.lm_head.weight)
    return run


def step_fn(model, cache, slots, tokens):
    def run():
        for s in slots:
            cache.lengths[s] = 600  # a typical mid-utterance cache length
        model.decode(tokens, cache, slots)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=("small", "large"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    a = ap.parse_args()
    print(f"machine: {machine()}")
    models = build_models(SHAPES[a.shape], f"random-{a.shape}", seed=0)
    for dtype_name in a.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for name in ("text", "coarse"):
            model = getattr(models, name).to(dtype)
            for B in a.batch:
                cache = model.new_cache(B)
                slots = [cache.allocate() for _ in range(B)]
                tokens = torch.zeros(B, dtype=torch.long)
                x = torch.randn(B, model.config.n_embd, dtype=dtype)
                floor = median_time(floor_fn(model, x))
                step = median_time(step_fn(model, cache, slots, tokens))
                print(f"{name:6s} {dtype_name} B={B}: step {step * 1e3:6.2f} ms, floor {floor * 1e3:6.2f} ms, "
                      f"ratio {step / floor:4.2f}")
            model.to(torch.float32)


if __name__ == "__main__":
    main()
