"""Time per autoregressive step against its floor (the same linear layers alone).

    python bench/ar_step.py [--shape small|large] [--batch 1 8] [--quantize int8]

A decode step of Bark's causal GPT is memory bound: every weight is read once.
The floor is those reads and nothing else: the step's Linear layers (c_attn,
c_proj, c_fc, c_proj per layer, and lm_head) applied to a [B, C] input. The
ratio step / floor says how much time goes to everything else (attention over
the cache, layer norms, embedding, Python).

Attention must also read every stream's keys and values up to its cache length
(600 positions here): at B=8 that is more bytes than the weights. The second
floor, "floor+kv", adds those bytes at the bandwidth the weights floor reached:
floor × (weight bytes + K/V bytes) / weight bytes. Its ratio says how close the
whole step is to the bytes it cannot avoid reading.
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


CACHE_LEN = 600  # a typical mid-utterance cache length


def step_fn(model, cache, slots, tokens):
    def run():
        for s in slots:
            cache.lengths[s] = CACHE_LEN
        model.decode(tokens, cache, slots)
    return run


def weight_bytes(model) -> int:
    """Bytes of the parameters floor_fn reads (Linear weights and biases, lm_head)."""
    mods = [m for block in model.transformer.h for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc,
                                                          block.mlp.c_proj)] + [model.lm_head]
    return sum(p.numel() * p.element_size() for m in mods for p in m.parameters())


def kv_bytes(cache, batch: int) -> int:
    """Bytes of keys and values `batch` streams read at CACHE_LEN positions."""
    per_pos = 2 * cache.n_layer * cache.n_head * cache.head_dim * cache.k.element_size()
    return batch * CACHE_LEN * per_pos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", choices=("small", "large"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--quantize", choices=("none", "int8"), default="none",
                    help="int8: also time bf16 steps with int8 weight-only linear layers")
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
                w, kv = weight_bytes(model), kv_bytes(cache, B)
                floor_kv = floor * (w + kv) / w
                print(f"{name:6s} {dtype_name} B={B}: step {step * 1e3:6.2f} ms, floor {floor * 1e3:6.2f} ms, "
                      f"ratio {step / floor:4.2f}; K/V {str(cache.dtype)[6:]} {kv / 2**20:.0f} MiB vs weights "
                      f"{w / 2**20:.0f} MiB, floor+kv {floor_kv * 1e3:6.2f} ms, ratio {step / floor_kv:4.2f}")
            model.to(torch.float32)
    if a.quantize == "int8":
        int8_rows(models, a.batch)


def int8_rows(models, batches: list[int]) -> None:
    """bf16 activations, int8 weights: the step and its ratio to the bf16 step measured just before."""
    import copy

    from streaming.models.quant import quantize_gpt

    for name in ("text", "coarse"):
        bf16 = copy.deepcopy(getattr(models, name)).to(torch.bfloat16)
        int8 = quantize_gpt(copy.deepcopy(bf16))
        for B in batches:
            times = {}
            for label, model in (("bf16", bf16), ("int8", int8)):
                cache = model.new_cache(B)
                slots = [cache.allocate() for _ in range(B)]
                times[label] = median_time(step_fn(model, cache, slots, torch.zeros(B, dtype=torch.long)))
            weights = sum(b.numel() for b in int8.buffers() if b.dtype == torch.int8)
            print(f"{name:6s} int8 B={B}: step {times['int8'] * 1e3:6.2f} ms vs bf16 {times['bf16'] * 1e3:6.2f} ms, "
                  f"ratio {times['int8'] / times['bf16']:4.2f} (int8 weights {weights / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
