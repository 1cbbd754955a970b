"""int8 weight-only linear layers for CPU decoding (opt-in: `--quantize int8`).

A decode step of Bark's causal GPTs reads every weight once for one token per
stream: it is bound by the bytes of its weights. Stored as int8 with one scale per
output channel (symmetric, round to nearest), they are a quarter of fp32 and half
of bf16. The matmul is torch's packed weight-only int8 CPU kernel
(`aten._weight_int8pack_mm`): activations stay in the model's dtype, each row of
the weight is dequantised on the fly.

Only the text and coarse GPTs are quantised. The fine model runs whole windows
(compute bound, hundreds of positions per call) where weight bytes are not the
cost, so it is refused. GPUs are refused too: there bf16 weights and the GPU's own
kernels are the fast path. Fidelity against fp32 must be measured with the real
weights (`bench/quantize_fidelity.py` prints per-stage KL divergence and greedy
agreement; with random weights it says little about real speech).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .fine_gpt import FineGPT
from .gpt import GPT

QUANTIZE_MODES = ("none", "int8")
# Above this many rows (prompt prefills: up to 887 positions x streams) the packed weight-only kernel is
# slower than dequantising the weight once and running a dense GEMM in the activations' dtype.
PACKED_MAX_ROWS = 32


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 [out, in] and per-output-channel scales."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.register_buffer("weight_int8", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """x [..., in] -> [..., out] (or only output rows [lo, hi), e.g. the coarse head's two codebooks)."""
        w, s, b = self.weight_int8, self.scales, self.bias
        if rows is not None:
            w, s, b = w[rows[0]:rows[1]], s[rows[0]:rows[1]], None if b is None else b[rows[0]:rows[1]]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] > PACKED_MAX_ROWS:  # prompt prefills: compute bound, a dense GEMM is faster
            y = torch.nn.functional.linear(x2, w.to(x.dtype) * s[:, None].to(x.dtype))
        else:  # decode steps: bound by weight bytes, the packed int8 kernel reads a quarter of fp32's
            y = torch.ops.aten._weight_int8pack_mm(x2, w, s)
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        return y if b is None else y + b

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_gpt(model: GPT) -> GPT:
    """Replace every Linear of a causal GPT (attention, MLP, output head) by an Int8Linear, in place."""
    if isinstance(model, FineGPT) or not isinstance(model, GPT):
        raise ConfigError("quantize: only the text and coarse GPTs are quantised; the fine model runs "
                          "compute-bound windows where int8 weights save nothing (it stays in its dtype)",
                          field="quantize")
    device = model.transformer.wte.weight.device
    if device.type != "cpu":
        raise ConfigError(f"quantize: int8 weight-only layers are a CPU kernel; the model is on {device} "
                          "(on a GPU use --dtype bf16 and drop --quantize)", field="quantize")
    dtype = model.transformer.wte.weight.dtype
    for block in model.transformer.h:
        block.attn.c_attn = Int8Linear(block.attn.c_attn, dtype)
        block.attn.c_proj = Int8Linear(block.attn.c_proj, dtype)
        block.mlp.c_fc = Int8Linear(block.mlp.c_fc, dtype)
        block.mlp.c_proj = Int8Linear(block.mlp.c_proj, dtype)
    model.lm_head = Int8Linear(model.lm_head, dtype)
    return model


def quantize_models(models, mode: str):
    """Apply `mode` ("none" or "int8") to a BarkModels bundle's text and coarse GPTs; returns the bundle."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize: {mode!r} is not one of {', '.join(QUANTIZE_MODES)}", field="quantize")
    if mode == "int8":
        quantize_gpt(models.text)
        quantize_gpt(models.coarse)
    return models
