"""Bark's causal GPT (text→semantic and semantic→coarse), batched over streams.

Same architecture and parameter names as Suno's `bark/model.py` (nanoGPT: GPT-2
blocks, LayerNorm with bias, exact GELU, learned positions), so Suno
checkpoints load as plain state dicts. What differs is execution:

- `prefill()` runs whole prompts of equal length for several streams and writes
  their keys/values into their slots of a preallocated `KVCache`;
- `decode()` advances a batch of streams by one token each, every stream at
  its own position. Every layer is one batched call: attention reads each row's
  cache up to the batch's longest length with the keys past a row's own length
  masked out (probability exactly 0), so a stream's numbers equal its numbers
  alone up to float rounding of the batched reductions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import upload
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


def attend_batch(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                 kernel: str) -> torch.Tensor:
    """Decode attention for a whole batch in one call.

    q [B, nh, 1, hs]; keys/values [B, nh, L, hs] (each row's cache up to the batch's longest
    length); mask: bool [B, 1, 1, L], True where a key is valid for that row, or None when
    every row's cache has length L. Masked keys get probability exactly 0.

    kernel "sdpa": torch's fused attention (GPUs). kernel "matmul": two batched matmuls
    and a softmax in the cache's precision; on CPU this is ~3x faster than SDPA at decode
    shapes.
    """
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q.to(keys.dtype), keys.transpose(-1, -2)) * scale  # [B, nh, 1, L]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), values).to(q.dtype)  # [B, nh, 1, hs]


@dataclass(frozen=True)
class DecodeIndex:
    """Where a decode step reads and writes, built once per step and shared by every layer.

    All tensors live on the model's device, so no layer goes back to the host.
    """

    slots: torch.Tensor  # int64 [B] KV-cache slot of each row
    positions: torch.Tensor  # int64 [B] position of each row's new token
    length: int  # L = longest row's cache length after the step (host int, sizes the views)
    window: slice | None  # slots as a contiguous range (rows sorted by slot): read the cache as a view
    mask: torch.Tensor | None  # bool [B, 1, 1, L], None when every row has length L

    @staticmethod
    def build(slots: list[int], positions: list[int], device: torch.device) -> "DecodeIndex":
        """Exactly the lengths this step needs (dynamic shapes)."""
        slot_t = upload(slots, device)
        pos_t = upload(positions, device)
        length = max(positions) + 1
        contiguous = all(b == a + 1 for a, b in zip(slots, slots[1:]))
        window = slice(slots[0], slots[-1] + 1) if contiguous else None
        mask = None
        if min(positions) + 1 != length:
            mask = (torch.arange(length, device=device)[None, :] <= pos_t[:, None])[:, None, None, :]
        return DecodeIndex(slot_t, pos_t, length, window, mask)

    @staticmethod
    def static(slot_t: torch.Tensor, pos_t: torch.Tensor, length: int) -> "DecodeIndex":
        """Fixed shapes for a captured step: rows gather their slots, every row reads `length` positions
        with a mask computed on the device from `pos_t` (the step's own op, so a CUDA graph replays it)."""
        mask = (torch.arange(length, device=pos_t.device)[None, :] <= pos_t[:, None])[:, None, None, :]
        return DecodeIndex(slot_t, pos_t, length, None, mask)


# On CPU, a chunk whose keys and values in one layer exceed this many bytes attends on its own, reading its
# slot as a view: copying it into a padded batch costs more than the few ops it saves (Bark-small, 8 chunks of
# 16 beside 8 decode rows at ~500 positions: 131-151 ms one by one, 157-161 ms batched). Smaller chunks (tiny
# models, short prompts), and every chunk on a GPU, where a launch costs more than a copy, go in one batch.
CPU_CHUNK_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class ChunkIndex:
    """Where the prompt chunks of one GPT.extend call (rows of more than one position) attend, built once per
    call and shared by every layer. Chunk i holds flat positions off_i .. off_i+n_i-1 of the call and appends
    to slot s_i after its `start_i` cached positions; its query t sees keys 0 .. start_i+t.

    Either one by one (`views`: each chunk reads its slot's cache as a view, no copy), or as one padded batch,
    one attention call per layer whatever their number (the op count of a tick does not grow with the
    streams): the queries are padded to the longest chunk (padding repeats a chunk's last query, whose output
    is dropped), every slot's keys are gathered up to the longest end into buffers every layer reuses, and a
    mask keeps each query causal within its own slot.
    """

    views: list[tuple[int, int, int, torch.Tensor]] | None  # one by one: (offset, n, slot, mask [n, end])
    length: int = 0  # batched: keys read per slot, the longest start_i + n_i
    mask: torch.Tensor | None = None  # bool [M, 1, nmax, length]
    query: torch.Tensor | None = None  # int64 [M, nmax] flat position of each (padded) query
    slots: torch.Tensor | None = None  # int64 [M]
    rows: torch.Tensor | None = None  # int64 [P] the real queries' rows in the [M * nmax] attention output
    flat: torch.Tensor | None = None  # int64 [P] their flat positions in the call
    keys: torch.Tensor | None = None  # [M, nh, length, hs] gathered keys (one buffer for every layer)
    values: torch.Tensor | None = None  # the same for values

    @staticmethod
    def build(offsets: list[int], lens: list[int], slots: list[int], starts: list[int],
              cache: KVCache) -> "ChunkIndex":
        device = cache.k.device
        nmax, length = max(lens), max(st + n for st, n in zip(starts, lens))
        _, _, nh, _, hs = cache.k.shape
        copy_bytes = 2 * nh * length * hs * cache.k.element_size()
        if len(lens) == 1 or (device.type == "cpu" and copy_bytes > CPU_CHUNK_COPY_BYTES):
            views = []
            for off, n, slot, start in zip(offsets, lens, slots, starts):
                end = start + n
                mask = torch.arange(end, device=device)[None, :] <= torch.arange(start, end, device=device)[:, None]
                views.append((off, n, slot, mask))
            return ChunkIndex(views)
        t = np.minimum(np.arange(nmax)[None, :], np.asarray(lens)[:, None] - 1)  # [M, nmax] padding repeats
        last_key = upload(np.asarray(starts)[:, None] + t, device)  # [M, nmax]
        mask = (torch.arange(length, device=device)[None, None, :] <= last_key[:, :, None])[:, None]
        real = np.arange(nmax)[None, :] < np.asarray(lens)[:, None]  # [M, nmax]
        flat = np.concatenate([np.arange(off, off + n) for off, n in zip(offsets, lens)])
        shape = (len(lens), nh, length, hs)
        keys, values = (torch.empty(shape, dtype=cache.dtype, device=device) for _ in range(2))
        return ChunkIndex(None, length, mask, upload(np.asarray(offsets)[:, None] + t, device), upload(slots, device),
                          upload(np.flatnonzero(real), device), upload(flat, device), keys, values)


def gather_slots(cache: KVCache, layer: int, slots: torch.Tensor, length: int,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, nh, length, hs] of `slots` (any order) in one layer: a copy, into `out` when given
    (buffers reused by every layer: a fresh allocation of this size per layer is page-faulted in on CPU).
    index_select on the narrowed cache, not advanced indexing, which on CPU copies ~6x slower (2.5 vs 0.4 ms
    for 8 slots of Bark-small at 516 positions)."""
    k, v = cache.k[layer, :, :, :length], cache.v[layer, :, :, :length]
    if out is None:
        return k.index_select(0, slots), v.index_select(0, slots)
    return torch.index_select(k, 0, slots, out=out[0]), torch.index_select(v, 0, slots, out=out[1])


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

    def decode(self, x: torch.Tensor, cache: KVCache, layer: int, index: DecodeIndex) -> torch.Tensor:
        """x: [B, 1, C], one new token per row at `index.positions` in `index.slots`."""
        q, k, v = self._qkv(x)  # [B, nh, 1, hs]
        cache.k[layer, index.slots, :, index.positions] = k[:, :, 0].to(cache.dtype)  # [B, nh, hs]
        cache.v[layer, index.slots, :, index.positions] = v[:, :, 0].to(cache.dtype)
        L = index.length
        if index.window is not None:  # rows are consecutive slots: views, no copy
            keys, values = cache.k[layer, index.window, :, :L], cache.v[layer, index.window, :, :L]
        else:
            keys, values = gather_slots(cache, layer, index.slots, L)
        kernel = cache.kernel or ("sdpa" if cache.k.device.type != "cpu" else "matmul")
        y = attend_batch(q, keys, values, index.mask, kernel)  # [B, nh, 1, hs]
        return self.c_proj(merge_heads(y))


    def extend(self, x: torch.Tensor, cache: KVCache, layer: int, slot_t: torch.Tensor, pos_t: torch.Tensor,
               singles: tuple[torch.Tensor, DecodeIndex] | None, chunks: ChunkIndex | None) -> torch.Tensor:
        """x: [1, N, C], the flat positions of several rows (GPT.extend). `singles`: the flat index of the
        one-token rows and their DecodeIndex; `chunks`: where the longer rows attend."""
        N = x.shape[1]
        q, k, v = self.c_attn(x[0]).split(self.n_embd, dim=1)  # each [N, C]
        nh, hs = self.n_head, self.n_embd // self.n_head
        q, k, v = q.view(N, nh, hs), k.view(N, nh, hs), v.view(N, nh, hs)
        cache.k[layer, slot_t, :, pos_t] = k.to(cache.dtype)  # [N, nh, hs]
        cache.v[layer, slot_t, :, pos_t] = v.to(cache.dtype)
        y = torch.empty_like(q)
        if singles is not None:
            flat, index = singles
            L = index.length
            if index.window is not None:  # consecutive slots in order: views, no copy of the cache
                keys, values = cache.k[layer, index.window, :, :L], cache.v[layer, index.window, :, :L]
            else:
                keys, values = gather_slots(cache, layer, index.slots, L)
            kernel = cache.kernel or ("sdpa" if cache.k.device.type != "cpu" else "matmul")
            y[flat] = attend_batch(q[flat][:, :, None], keys, values, index.mask, kernel)[:, :, 0]
        if chunks is not None and chunks.views is not None:  # one by one, each slot's cache as a view
            for off, n, slot, mask in chunks.views:
                end = mask.shape[1]
                qi = q[off:off + n].transpose(0, 1)[None].to(cache.dtype)  # [1, nh, n, hs]
                keys, values = cache.k[layer, slot, :, :end][None], cache.v[layer, slot, :, :end][None]
                yi = F.scaled_dot_product_attention(qi, keys, values, attn_mask=mask)  # [1, nh, n, hs]
                y[off:off + n] = yi[0].transpose(0, 1).to(y.dtype)
        elif chunks is not None:  # one padded batch, whatever their number
            qi = q[chunks.query].permute(0, 2, 1, 3).to(cache.dtype)  # [M, nh, nmax, hs]
            keys, values = gather_slots(cache, layer, chunks.slots, chunks.length, (chunks.keys, chunks.values))
            yi = F.scaled_dot_product_attention(qi, keys, values, attn_mask=chunks.mask)  # [M, nh, nmax, hs]
            y[chunks.flat] = yi.transpose(1, 2).reshape(-1, nh, hs)[chunks.rows].to(y.dtype)
        return self.c_proj(y.reshape(1, N, self.n_embd))


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
        w = self.transformer.wte.weight  # (the head may be an int8 layer with no float weight)
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

    def head(self, x: torch.Tensor, rows: tuple[int, int] | None, last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of each row's last position (`last` [B], default T - 1).

        `rows` = vocabulary rows [lo, hi) only (the coarse stage needs 2 of 12 blocks).
        """
        x = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]  # [B, C]
        x = self.transformer.ln_f(x)
        if rows is None:
            return self.lm_head(x)
        if not isinstance(self.lm_head, nn.Linear):  # an int8 head slices its own rows
            return self.lm_head(x, rows)
        return F.linear(x, self.lm_head.weight[rows[0]:rows[1]])  # [B, hi - lo]

    @torch.inference_mode()
    def prefill(
        self, idx: torch.Tensor, cache: KVCache, slots: list[int], merge_context: bool = False,
        rows: tuple[int, int] | None = None, lengths: list[int] | None = None,
    ) -> torch.Tensor:
        """Run prompts idx [B, T] from position 0 in `slots`, all in one model call.

        Ragged prompts come right-padded to T with their true `lengths` (positions of
        the merged prompt, i.e. T' for the semantic model). Attention is causal, so a
        row's real positions never see its padding; the padding's keys land in the
        cache past the row's length, where decode masks them and later tokens overwrite
        them. Returns the logits of each row's last real position, [B, output_vocab]
        (or the vocabulary `rows` only); sets each slot's length.
        """
        tok = self.embed_prompt(idx, merge_context)  # [B, T', C]
        T = tok.shape[1]
        assert T <= cache.max_len, f"prompt of {T} positions exceeds cache length {cache.max_len}"
        lengths = lengths or [T] * len(slots)
        pos = torch.arange(T, device=idx.device)
        x = tok + self.transformer.wpe(pos)[None]  # [B, T', C]
        slot_t = upload(slots, idx.device)
        for layer, block in enumerate(self.transformer.h):
            x = x + block.attn.prefill(block.ln_1(x), cache, layer, slot_t)
            x = x + block.mlp(block.ln_2(x))
        for s, n in zip(slots, lengths):
            cache.lengths[s] = n
        last = None if min(lengths) == T else upload(lengths, idx.device) - 1
        return self.head(x, rows, last)

    @torch.inference_mode()
    def extend(
        self, chunks: list[np.ndarray], cache: KVCache, slots: list[int], rows: tuple[int, int] | None = None,
        logits_of: list[int] | None = None,
    ) -> torch.Tensor | None:
        """Append chunk i (tokens int64 [n_i]) to slot i after what it holds, all rows in one pass.

        Every linear layer runs once over all the rows' positions together, so a decode token
        (a chunk of 1) and a prompt chunk share the weight reads: on a CPU a step's memory-bound
        pass absorbs a compute-bound prefix chunk for little extra time. Attention is causal
        over each slot's cache plus the chunk itself: chunks of 1 attend as a batch, longer
        chunks as another (ChunkIndex), so the call's op count does not grow with its rows. A prompt computed as one prefill, or as chunks extended one after
        another, gives the same keys and values up to float rounding (attention is causal).
        Returns the logits of the last position of the rows in `logits_of` ([R, V] or the
        vocabulary `rows`), or None; advances each slot's length by its chunk.
        """
        device = self.transformer.wte.weight.device
        lens = [len(c) for c in chunks]
        starts = [cache.lengths[s] for s in slots]
        assert max(st + n for st, n in zip(starts, lens)) <= cache.max_len, "a chunk runs past its KV slot"
        positions = np.concatenate([np.arange(st, st + n) for st, n in zip(starts, lens)])
        tok = upload(np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks]), device)
        pos_t = upload(positions, device)
        slot_t = upload(np.repeat(slots, lens), device)
        x = (self.transformer.wte(tok) + self.transformer.wpe(pos_t))[None]  # [1, N, C]
        ends = np.cumsum(lens)
        singles = sorted((i for i, n in enumerate(lens) if n == 1), key=slots.__getitem__)  # by slot: views
        single_index = None
        if singles:
            single_index = (upload([int(ends[i]) - 1 for i in singles], device),
                            DecodeIndex.build([slots[i] for i in singles], [starts[i] for i in singles], device))
        multi = [i for i, n in enumerate(lens) if n > 1]
        chunk_index = None
        if multi:
            chunk_index = ChunkIndex.build([int(ends[i]) - lens[i] for i in multi], [lens[i] for i in multi],
                                           [slots[i] for i in multi], [starts[i] for i in multi], cache)
        for layer, block in enumerate(self.transformer.h):
            x = x + block.attn.extend(block.ln_1(x), cache, layer, slot_t, pos_t, single_index, chunk_index)
            x = x + block.mlp(block.ln_2(x))
        for s, st, n in zip(slots, starts, lens):
            cache.lengths[s] = st + n
        if not logits_of:
            return None
        last = upload([int(ends[i]) - 1 for i in logits_of], device)
        return self.head(x[0, last][:, None], rows)

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, cache: KVCache, slots: list[int], rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Append one token per stream: tokens [B] for `slots` ([B]). Returns logits [B, V] (or `rows`).

        One call per layer for the whole batch; rows given in increasing slot order
        over consecutive slots read the cache as views.
        """
        positions = [cache.lengths[s] for s in slots]
        assert max(positions) < cache.max_len, "a stream ran past the end of its KV cache slot"
        logits = self.decode_at(tokens, cache, DecodeIndex.build(slots, positions, tokens.device), rows)
        for s in slots:
            cache.lengths[s] += 1
        return logits

    @torch.inference_mode()
    def decode_at(self, tokens: torch.Tensor, cache: KVCache, index: DecodeIndex,
                  rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The step itself, on tensors only (no host values, no cache bookkeeping): what a CUDA graph captures."""
        x = self.transformer.wte(tokens[:, None]) + self.transformer.wpe(index.positions)[:, None]  # [B, 1, C]
        for layer, block in enumerate(self.transformer.h):
            x = x + block.attn.decode(block.ln_1(x), cache, layer, index)
            x = x + block.mlp(block.ln_2(x))
        return self.head(x, rows)
