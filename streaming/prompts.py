"""Model inputs shared by offline and streaming generation (Bark's exact layout).

Everything here is pure bookkeeping over token arrays; see bark-facts.md.
"""

from __future__ import annotations

import math

import numpy as np

from .constants import (
    CODEBOOK_SIZE,
    COARSE_INFER_TOKEN,
    COARSE_SEMANTIC_PAD_TOKEN,
    COARSE_SEMANTIC_WINDOW,
    MAX_COARSE_HISTORY,
    MAX_COARSE_SEMANTIC_HISTORY,
    MAX_FINE_HISTORY,
    MAX_SEMANTIC_HISTORY_TOKENS,
    MAX_TEXT_TOKENS,
    N_COARSE_CODEBOOKS,
    SEMANTIC_INFER_TOKEN,
    SEMANTIC_PAD_TOKEN,
    SEMANTIC_TO_COARSE_RATIO,
    SEMANTIC_VOCAB_SIZE,
    TEXT_ENCODING_OFFSET,
    TEXT_PAD_TOKEN,
)


# ------------------------------------------------------------------ semantic
def semantic_prompt(text_ids: list[int], semantic_history: np.ndarray | None) -> np.ndarray:
    """int64 [513]: 256 text ids (offset, cut, padded) + 256 history + infer token."""
    text = np.asarray(text_ids, dtype=np.int64)[:MAX_TEXT_TOKENS] + TEXT_ENCODING_OFFSET
    text = np.pad(text, (0, MAX_TEXT_TOKENS - len(text)), constant_values=TEXT_PAD_TOKEN)
    if semantic_history is None:
        hist = np.full(MAX_SEMANTIC_HISTORY_TOKENS, SEMANTIC_PAD_TOKEN, dtype=np.int64)
    else:
        hist = np.asarray(semantic_history, dtype=np.int64)[-MAX_SEMANTIC_HISTORY_TOKENS:]
        hist = np.pad(hist, (0, MAX_SEMANTIC_HISTORY_TOKENS - len(hist)), constant_values=SEMANTIC_PAD_TOKEN)
    return np.concatenate([text, hist, [SEMANTIC_INFER_TOKEN]])


# -------------------------------------------------------------------- coarse
def flatten_coarse(coarse: np.ndarray) -> np.ndarray:
    """[2, T] codebook codes -> [2T] interleaved model tokens (cb0, cb1, cb0, ...)."""
    offsets = SEMANTIC_VOCAB_SIZE + CODEBOOK_SIZE * np.arange(coarse.shape[0])[:, None]
    return (coarse.astype(np.int64) + offsets).T.reshape(-1)


def unflatten_coarse(tokens: np.ndarray) -> np.ndarray:
    """[2T] interleaved model tokens -> [2, T] codebook codes."""
    codes = np.asarray(tokens, dtype=np.int64).reshape(-1, N_COARSE_CODEBOOKS).T
    return codes - SEMANTIC_VOCAB_SIZE - CODEBOOK_SIZE * np.arange(N_COARSE_CODEBOOKS)[:, None]


def coarse_history(semantic: np.ndarray | None, coarse: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A voice's (semantic history, flattened coarse history), trimmed to align as Bark does.

    Bark keeps at most 209 semantic tokens, an even count, and the matching
    round(n * 3.006) coarse tokens, then drops the last 2 coarse tokens
    (the reference's "time alignment hack").
    """
    if semantic is None or coarse is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    sem = np.asarray(semantic, dtype=np.int64)
    flat = flatten_coarse(np.asarray(coarse))
    n_sem = int(min(MAX_COARSE_SEMANTIC_HISTORY, len(sem) - len(sem) % 2,
                    int(np.floor(len(flat) / SEMANTIC_TO_COARSE_RATIO))))
    n_coarse = int(round(n_sem * SEMANTIC_TO_COARSE_RATIO))
    # Python slicing as in the reference: `a[-0:]` keeps everything (degenerate voices).
    return sem[-n_sem:], flat[-n_coarse:][:-2]


def coarse_n_steps(n_semantic: int) -> int:
    """Coarse tokens (both codebooks) Bark generates for n_semantic new semantic tokens."""
    return math.floor(n_semantic * SEMANTIC_TO_COARSE_RATIO / N_COARSE_CODEBOOKS) * N_COARSE_CODEBOOKS


def coarse_window_semantic_span(n_semantic_history: int, n_step: int) -> tuple[int, int]:
    """[start, end) of the combined semantic array (history + new) a window reads.

    `n_step` is the number of coarse tokens generated before the window. The
    window reads at most 256 tokens, fewer if the array is shorter.
    """
    semantic_idx = n_semantic_history + int(round(n_step / SEMANTIC_TO_COARSE_RATIO))
    start = max(0, semantic_idx - MAX_COARSE_SEMANTIC_HISTORY)
    return start, start + COARSE_SEMANTIC_WINDOW


def coarse_window_prompt(semantic_window: np.ndarray, coarse_tokens: np.ndarray) -> np.ndarray:
    """int64 [<=887]: semantic window padded to 256, infer token, last <=630 coarse tokens."""
    sem = np.asarray(semantic_window, dtype=np.int64)[:COARSE_SEMANTIC_WINDOW]
    sem = np.pad(sem, (0, COARSE_SEMANTIC_WINDOW - len(sem)), constant_values=COARSE_SEMANTIC_PAD_TOKEN)
    hist = np.asarray(coarse_tokens, dtype=np.int64)[-MAX_COARSE_HISTORY:]
    return np.concatenate([sem, [COARSE_INFER_TOKEN], hist])


COARSE_HEAD_ROWS = (SEMANTIC_VOCAB_SIZE, SEMANTIC_VOCAB_SIZE + N_COARSE_CODEBOOKS * CODEBOOK_SIZE)  # logits coarse uses


def coarse_logit_range(n_step: int) -> tuple[int, int]:
    """[lo, hi) of the logits for coarse step n_step (even: codebook 0, odd: codebook 1)."""
    lo = SEMANTIC_VOCAB_SIZE + (n_step % N_COARSE_CODEBOOKS) * CODEBOOK_SIZE
    return lo, lo + CODEBOOK_SIZE


# ---------------------------------------------------------------------- fine
def fine_history(fine: np.ndarray | None) -> np.ndarray:
    """A voice's last <=512 fine frames, int64 [8, H] (H may be 0)."""
    if fine is None:
        return np.zeros((8, 0), dtype=np.int64)
    return np.asarray(fine, dtype=np.int64)[:, -MAX_FINE_HISTORY:]
