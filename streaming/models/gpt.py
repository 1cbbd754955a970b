"""Bark's causal GPT (text→semantic and semantic→coarse), batched over streams.

Same architecture and parameter names as Suno's `bark/model.py` (nanoGPT: GPT-2
blocks, LayerNorm with bias, exact GELU, learned positions), so Suno
checkpoints load as plain state dicts. What differs is execution:

- `prefill()` runs whole prompts of equal length for several streams and writes
  their keys/values into their slots of a preallocated `KVCache`;
- `decode()` advances a batch of streams by one token each, every stream at
  its own position. Linear layers run on the whole batch; attention runs per
  stream over exactly its own valid cache length, so a stream's numbers are the
  same alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a causal Bark GPT (defaults: Bark-small's semantic model)."""

    block_size: int = 1024  # max positions
    input_vocab_size: int = 10_048
    output_vocab_size: int = 10_048
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # unused at inference; kept for checkpoint compatibility
    bias: bool = True  # bias in Linear and LayerNorm layers

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (parameter names as in Suno's checkpoints)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


def split_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """[B, T, C] -> [B, nh, T, hs]"""
    B, T, C = t.shape
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)


def attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, kernel: str) -> torch.Tensor:
    """One stream's decode attention: q [nh, 1, hs] over keys/values [nh, L, hs] (cache views).

    kernel "sdpa": torch's fused attention (GPUs). kernel "matmul": two matmuls and a
    softmax in the cache's precision, reading the strided cache views without copies;
    on CPU this is 3x faster than SDPA at decode shapes.
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype))
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.to(keys.dtype), keys.transpose(-1, -2)) * scale  # [nh, 1, L]
    return torch.matmul(torch.softmax(scores, dim=-1), values).to(q.dtype)  # [nh, 1, hs]


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, nh, T, hs] -> [B, T, C]"""
    B, nh, T, hs = t.shape
    return t.transpose(1, 2).reshape(B, T, nh * hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each [B, T, C]
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def prefill(self, x: torch.Tensor, cache: KVCache, layer: int, slots: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C], prompts starting at position 0 in `slots` ([B])."""
        q, k, v = self._qkv(x)  # [B, nh, T, hs]
        T = x.shape[1]
        cache.k[layer, slots, :, :T] = k.to(cache.dtype)
        cache.v[layer, slots, :, :T] = v.to(cache.dtype)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, nh, T, hs]
        return self.c_proj(merge_heads(y))

    def decode(
        self, x: torch.Tensor, cache: KVCache, layer: int, slots: list[int], positions: list[int],
        index: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x: [B, 1, C], one new token per stream at `positions` in `slots` (`index`: both as tensors)."""
        q, k, v = self._qkv(x)  # [B, nh, 1, hs]
        slot_t, pos_t = index
        cache.k[layer, slot_t, :, pos_t] = k[:, :, 0].to(cache.dtype)  # [B, nh, hs] at each stream's position
        cache.v[layer, slot_t, :, pos_t] = v[:, :, 0].to(cache.dtype)
        kernel = "sdpa" if cache.k.device.type != "cpu" else "matmul"
        ys = []
        for i, (slot, pos) in enumerate(zip(slots, positions)):
            keys = cache.k[layer, slot, :, : pos + 1]  # [nh, L, hs], a view
            values = cache.v[layer, slot, :, : pos + 1]
            ys.append(attend_one(q[i], keys, values, cache.kernel or kernel))  # [nh, 1, hs]
        y = torch.stack(ys)  # [B, nh, 1, hs]
        return self.c_proj(merge_heads(y))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)


class GPT(nn.Module):
    """Causal Bark GPT with batched, slot-addressed KV caching."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.input_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.output_vocab_size, bias=False)

    def new_cache(self, n_slots: int, max_len: int | None = None, kernel: str | None = None) -> KVCache:
        """A cache for `n_slots` streams on this model's device.

        On CPU the cache is fp32 whatever the weights (decode attention then runs as
        fp32 matmuls over cache views, the fast path there); on GPUs it has the
        model's dtype and decode attention uses SDPA. `kernel` forces either path.
        """
        cfg = self.config
        w = self.lm_head.weight
        return KVCache(
            kernel=kernel,
            n_layer=cfg.n_layer,
            n_slots=n_slots,
            n_head=cfg.n_head,
            max_len=max_len or cfg.block_size,
            head_dim=cfg.n_embd // cfg.n_head,
            dtype=torch.float32 if w.device.type == "cpu" else w.dtype,
            device=w.device,
        )

    def embed_prompt(self, idx: torch.Tensor, merge_context: bool = False) -> torch.Tensor:
        """idx: LongTensor [B, T] -> token embeddings [B, T', C].

        With `merge_context` (the semantic prompt: 256 text + 256 history + infer),
        the first two blocks of 256 are embedded and summed position by position,
        so T' = T - 256.
        """
        wte = self.transformer.wte
        if not merge_context:
            return wte(idx)
        assert idx.shape[1] >= 513, f"merged prompt needs >= 513 tokens, got {idx.shape[1]}"
        merged = wte(idx[:, :256]) + wte(idx[:, 256:512])  # [B, 256, C]
        return torch.cat([merged, wte(idx[:, 512:])], dim=1)

    def head(self, x: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
        """Logits [B, V] (or only vocabulary rows [lo, hi): the coarse stage needs 2 of 12 blocks)."""
        x = self.transformer.ln_f(x[:, -1])  # [B, C]
        if rows is None:
            return self.lm_head(x)
        return F.linear(x, self.lm_head.weight[rows[0]:rows[1]])  # [B, hi - lo]

    @torch.inference_mode()
    def prefill(
        self, idx: torch.Tensor, cache: KVCache, slots: list[int], merge_context: bool = False,
        rows: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Run prompts idx [B, T] (equal lengths) from position 0 in `slots`.

        Returns the logits of the last position, [B, output_vocab] (or the
        vocabulary `rows` only); sets each slot's length to the prompt length.
        """
        tok = self.embed_prompt(idx, merge_context)  # [B, T', C]
        T = tok.shape[1]
        assert T <= cache.max_len, f"prompt of {T} positions exceeds cache length {cache.max_len}"
        pos = torch.arange(T, device=idx.device)
        x = tok + self.transformer.wpe(pos)[None]  # [B, T', C]
        slot_t = torch.tensor(slots, device=idx.device)
        for layer, block in enumerate(self.transformer.h):
            x = x + block.attn.prefill(block.ln_1(x), cache, layer, slot_t)
            x = x + block.mlp(block.ln_2(x))
        for s in slots:
            cache.lengths[s] = T
        return self.head(x, rows)

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, cache: KVCache, slots: list[int], rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Append one token per stream: tokens [B] for `slots` ([B]). Returns logits [B, V] (or `rows`)."""
        positions = [cache.lengths[s] for s in slots]
        assert max(positions) < cache.max_len, "a stream ran past the end of its KV cache slot"
        pos_t = torch.tensor(positions, device=tokens.device)
        index = (torch.tensor(slots, device=tokens.device), pos_t)
        x = self.transformer.wte(tokens[:, None]) + self.transformer.wpe(pos_t)[:, None]  # [B, 1, C]
        for layer, block in enumerate(self.transformer.h):
            x = x + block.attn.decode(block.ln_1(x), cache, layer, slots, positions, index)
            x = x + block.mlp(block.ln_2(x))
        for s in slots:
            cache.lengths[s] += 1
        return self.head(x, rows)
