"""Bark's step rules, in one place, for a batch of rows.

Offline generation (`offline.py`) and the streaming stages (`stages/`) both
apply these and nothing else, so they cannot drift apart:

- the semantic stage's end rule (EOS token, or P(EOS) >= min_eos_p) and its token cap;
- the coarse stage's logit slice (even steps sample codebook 0, odd steps codebook 1);
- fine prediction (codebooks filled one after another over a window);
- which voice history a segment uses, and each segment's seed.

Model inputs (prompt layouts, window geometry) are bookkeeping over token
arrays and live in `prompts.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .constants import (
    CODEBOOK_SIZE,
    FINE_HOP,
    FINE_PAD_TOKEN,
    FINE_WINDOW,
    MAX_SEMANTIC_STEPS,
    N_COARSE_CODEBOOKS,
    N_FINE_CODEBOOKS,
    SEMANTIC_VOCAB_SIZE,
)
from .devices import upload
from .models.bundle import BarkModels
from .models.fine_gpt import FineGPT
from .params import SamplingParams
from .prompts import fine_history
from .sampling import RowSampling, StreamRng, pick, sample_rows, uniforms


# ------------------------------------------------------------------ segments
def segment_seed(seed: int | None, index: int) -> int | None:
    """Segment `index` of a request seeded `seed` samples with seed + index (None stays random)."""
    return None if seed is None else seed + index


def segment_history(preset, first_segment, index: int):
    """The voice history of segment `index`: the preset when one is given, else (after the
    first segment) the first segment's own output, which keeps one speaker without drift."""
    if preset is not None or index == 0:
        return preset
    return first_segment


# ------------------------------------------------------------------ semantic
def semantic_cap(p: SamplingParams) -> int:
    """Most semantic tokens a segment may produce."""
    return min(p.max_semantic_tokens or MAX_SEMANTIC_STEPS, MAX_SEMANTIC_STEPS)


def semantic_step(logits: torch.Tensor, params: list[SamplingParams], rngs: list[StreamRng]) -> tuple[np.ndarray, np.ndarray]:
    """Sample the next semantic token of each row from the text model's logits [B, V].

    Returns (tokens int64 [B], ended bool [B]): a row has ended when it drew the
    EOS token or its P(EOS) reached min_eos_p; its token is then not part of the output.
    """
    relevant = logits[:, : SEMANTIC_VOCAB_SIZE + 1]  # 10,000 semantic tokens + EOS (the last)
    rows = [RowSampling(p.text_temp, p.semantic_top_k, p.top_p) for p in params]
    tokens, eos_p = sample_rows(relevant, rows, rngs)
    min_eos = np.array([p.min_eos_p for p in params])
    return tokens, (tokens == SEMANTIC_VOCAB_SIZE) | (eos_p >= min_eos)


# -------------------------------------------------------------------- coarse
def coarse_step(logits: torch.Tensor, n_steps: list[int], params: list[SamplingParams],
                rngs: list[StreamRng]) -> np.ndarray:
    """Sample coarse step n_steps[b] of each row -> model tokens int64 [B].

    logits [B, 2 * 1024] are the coarse vocabulary rows only (prompts.COARSE_HEAD_ROWS).
    Step n samples codebook n % 2 from its own 1024 logits; the token is the code
    offset into the model vocabulary.
    """
    B = logits.shape[0]
    book = upload([n % N_COARSE_CODEBOOKS for n in n_steps], logits.device)
    own = logits.view(B, N_COARSE_CODEBOOKS, CODEBOOK_SIZE)[torch.arange(B, device=logits.device), book]
    rows = [RowSampling(p.coarse_temp, p.semantic_top_k, p.top_p) for p in params]
    codes, _ = sample_rows(own, rows, rngs)
    return codes + SEMANTIC_VOCAB_SIZE + CODEBOOK_SIZE * (np.asarray(n_steps) % N_COARSE_CODEBOOKS)


# ---------------------------------------------------------------------- fine
def fine_predict(
    model: FineGPT,
    windows: torch.Tensor,
    fill_from: int | list[int],
    n_given: int,
    temps: list[float | None],
    rngs: list[StreamRng],
    lengths: list[int] | None = None,
) -> None:
    """Fill codebooks n_given..7 of windows [B, T, 8] in place, row b at positions
    [fill_from[b], lengths[b]).

    Codebook by codebook, as Bark does: each prediction sees the codebooks filled
    before it. Windows shorter than T come right-padded with their `lengths`; the
    model masks the padding. One model call per codebook for the whole batch.
    A temperature of None takes the argmax for that row.
    """
    B, T, _ = windows.shape
    device = windows.device
    starts = np.full(B, fill_from) if isinstance(fill_from, int) else np.asarray(fill_from)
    ends = np.full(B, T) if lengths is None else np.asarray(lengths)
    counts = ends - starts
    rows = np.repeat(np.arange(B), counts)  # every filled position, row by row
    cols = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    at = (upload(rows, device), upload(cols, device))
    mask = None
    if ends.min() < T:
        mask = (torch.arange(T, device=device)[None] < upload(ends, device)[:, None])[:, None, None, :]
    sampled_rows = [b for b, t in enumerate(temps) if t is not None]
    if sampled_rows:
        pick_at = np.isin(rows, sampled_rows)  # filled positions of sampled rows
        sel = upload(np.flatnonzero(pick_at), device)
        temp_t = upload([temps[b] for b in rows[pick_at]], device)[:, None]
        sampled_rngs, sampled_counts = [rngs[b] for b in sampled_rows], [int(counts[b]) for b in sampled_rows]
    for cb in range(n_given, N_FINE_CODEBOOKS):
        logits = model(cb, windows, mask, at)[:, :CODEBOOK_SIZE]  # [N, 1024]
        preds = torch.argmax(logits, dim=-1)  # [N]
        if sampled_rows:
            probs = torch.softmax(logits[sel].float() / temp_t, dim=-1)
            u = upload(uniforms(sampled_rngs, sampled_counts), device)
            preds = preds.index_copy(0, sel, pick(probs, u))
        windows[at + (cb,)] = preds


def generate_fine(
    models: BarkModels, coarse: np.ndarray, voice, params: SamplingParams, generator: StreamRng
) -> np.ndarray:
    """Fine codes int64 [8, T] (Bark's `generate_fine`: 1024-frame windows, hop 512)."""
    n_given, n_frames = coarse.shape
    hist = fine_history(None if voice is None else voice.fine)  # [8, H]
    pad_rows = np.full((N_FINE_CODEBOOKS - n_given, n_frames), FINE_PAD_TOKEN, dtype=np.int64)
    arr = np.concatenate([hist, np.concatenate([coarse, pad_rows])], axis=1)  # [8, H + T]
    n_hist = hist.shape[1]
    n_pad = max(0, FINE_WINDOW - arr.shape[1])
    arr = np.pad(arr, ((0, 0), (0, n_pad)), constant_values=FINE_PAD_TOKEN)
    n_loops = max(0, math.ceil((n_frames - (FINE_WINDOW - n_hist)) / FINE_HOP)) + 1
    buf = torch.as_tensor(arr.T, device=models.device).contiguous()  # [H + T + pad, 8]
    total = buf.shape[0]
    for n in range(n_loops):
        start = min(n * FINE_HOP, total - FINE_WINDOW)
        fill = min(n_hist + n * FINE_HOP, total - FINE_HOP)
        window = buf[start:start + FINE_WINDOW]  # a view: writes land in buf
        fine_predict(models.fine, window[None], fill - start, n_given, [params.fine_temperature], [generator])
    out = buf.cpu().numpy().T[:, n_hist:]
    if n_pad:
        out = out[:, :-n_pad]
    assert out.shape == (N_FINE_CODEBOOKS, n_frames)
    return out
