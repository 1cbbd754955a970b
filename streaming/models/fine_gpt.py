"""Bark's non-causal fine GPT (coarse codebooks → codebooks 3..8), batched.

Same parameter names as Suno's `bark/model_fine.py`: one embedding table per
codebook, one output head per predicted codebook, and `wtes[i + 1]` tied to
`lm_heads[i]`. Every position sees every other position in its window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import MLP, CausalSelfAttention, GPTConfig, merge_heads


@dataclass(frozen=True)
class FineGPTConfig(GPTConfig):
    """Shape of the fine model (defaults: Bark-small's)."""

    input_vocab_size: int = 1_056
    output_vocab_size: int = 1_056
    n_codes_total: int = 8  # codebooks in the input
    n_codes_given: int = 1  # codebooks never predicted (the first head predicts codebook 1)


class NonCausalSelfAttention(CausalSelfAttention):
    """Same projections as the causal attention; every position attends to every other."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: bool [B, 1, 1, T], True for a row's real positions (None: all real)."""
        q, k, v = self._qkv(x)  # [B, nh, T, hs] each
        return self.c_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class FineBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = NonCausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class FineGPT(nn.Module):
    def __init__(self, cfg: FineGPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wtes=nn.ModuleList(
                    [nn.Embedding(cfg.input_vocab_size, cfg.n_embd) for _ in range(cfg.n_codes_total)]
                ),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([FineBlock(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_heads = nn.ModuleList(
            [
                nn.Linear(cfg.n_embd, cfg.output_vocab_size, bias=False)
                for _ in range(cfg.n_codes_given, cfg.n_codes_total)
            ]
        )
        for i in range(cfg.n_codes_total - cfg.n_codes_given):
            self.transformer.wtes[i + 1].weight = self.lm_heads[i].weight

    @torch.inference_mode()
    def forward(self, pred_idx: int, idx: torch.Tensor, mask: torch.Tensor | None = None,
                at: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits for codebook `pred_idx` at every position.

        idx: LongTensor [B, T, n_codes_total] (unknown codebooks hold 1024);
        returns [B, T, output_vocab]. Codebooks 0..pred_idx are embedded and summed.
        Windows of different lengths come right-padded to T with `mask` (bool
        [B, 1, 1, T], True at a row's real positions): no real position attends to
        padding, so a row's real outputs are its unpadded outputs up to float rounding.
        `at` = (rows [N], positions [N]): logits only there, [N, output_vocab] (the
        output head is the widest layer; predictions are needed only where codes are filled).
        """
        B, T, n_codes = idx.shape
        cfg = self.config
        assert T <= cfg.block_size, f"fine window of {T} frames exceeds block size {cfg.block_size}"
        assert 0 < pred_idx < n_codes == cfg.n_codes_total, (pred_idx, n_codes)
        tok = torch.stack(
            [self.transformer.wtes[i](idx[:, :, i]) for i in range(n_codes)], dim=-1
        )  # [B, T, C, n_codes]
        x = tok[..., : pred_idx + 1].sum(dim=-1)  # [B, T, C]
        x = x + self.transformer.wpe(torch.arange(T, device=idx.device))[None]
        for block in self.transformer.h:
            x = block(x, mask)
        if at is not None:
            x = x[at]  # [N, C]
        x = self.transformer.ln_f(x)
        return self.lm_heads[pred_idx - cfg.n_codes_given](x)  # [B, T, V] (or [N, V])
