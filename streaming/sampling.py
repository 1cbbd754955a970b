"""Token sampling for a whole batch at once, with each row's own settings and random numbers.

Per row the rule is Suno's: top-p, then top-k, then temperature; `temp=None` or
`top_k=1` is greedy (argmax), the contract under which our tokens equal the
reference's exactly. A batch of rows with different temperatures, top-k, top-p
and random streams is sampled with a fixed number of tensor ops, whatever B is.

Random numbers come from `StreamRng`, a counter-based generator (SplitMix64 of
key + counter) owned by one stream: row b's draws depend only on its own seed
and how many numbers it drew before, never on the other rows of the batch, so
a seeded stream samples the same tokens alone or in any batch. Draws for a
whole batch are computed in one vectorised numpy pass; sampling itself is the
inverse CDF (`searchsorted` of a uniform number in the cumulative
probabilities), which picks index i with probability p_i exactly like
`torch.multinomial`, but with our own per-row numbers.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .devices import upload

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function over a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


class StreamRng:
    """One stream's random numbers: reproducible from `seed`, independent of batching."""

    __slots__ = ("seed", "key", "counter")

    def __init__(self, seed: int | None = None) -> None:
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.key = _splitmix64(np.array([self.seed], dtype=np.uint64))[0]
        self.counter = 0  # numbers drawn so far

    def uniform(self, n: int) -> np.ndarray:
        """n float64 numbers in [0, 1)."""
        return uniforms([self], [n])

    def __repr__(self) -> str:
        return f"StreamRng(seed={self.seed}, counter={self.counter})"


def make_generator(seed: int | None) -> StreamRng:
    """A stream's random source; a fresh random seed when `seed` is None."""
    return StreamRng(seed)


def uniforms(rngs: list[StreamRng], counts: list[int]) -> np.ndarray:
    """Draw counts[i] numbers from rngs[i], all in one pass -> float64 [sum(counts)] in row order."""
    n = np.asarray(counts, dtype=np.int64)
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.float64)
    keys = np.repeat(np.array([r.key for r in rngs], dtype=np.uint64), n)
    starts = np.repeat(np.array([r.counter for r in rngs], dtype=np.uint64), n)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)  # 0..counts[i]-1 per row
    with np.errstate(over="ignore"):
        z = keys + (starts + offsets.astype(np.uint64) + np.uint64(1)) * _GOLDEN
    for r, k in zip(rngs, counts):
        r.counter += int(k)
    return (_splitmix64(z) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class RowSampling:
    """How one row is sampled."""

    temp: float | None
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temp is None or self.top_k == 1


def filter_logits(logits: torch.Tensor, top_k: list[int | None], top_p: list[float | None]) -> torch.Tensor:
    """logits float32 [B, V] -> a copy with each row's filtered entries set to -inf (top-p, then top-k)."""
    B, V = logits.shape
    x = logits.clone()
    if any(p is not None for p in top_p):
        sorted_x, order = torch.sort(x, dim=-1, descending=True, stable=True)
        cumulative = torch.cumsum(F.softmax(sorted_x, dim=-1), dim=-1)
        p = upload([float("inf") if q is None else q for q in top_p], x.device)
        remove = cumulative > p[:, None]
        remove = torch.cat([torch.zeros_like(remove[:, :1]), remove[:, :-1]], dim=1)  # keep the crossing token
        x = x.scatter(1, order, sorted_x.masked_fill(remove, float("-inf")))
    if any(k is not None for k in top_k):
        k = upload([V if q is None else min(q, V) for q in top_k], x.device)
        kth = torch.sort(x, dim=-1, descending=True).values.gather(1, (k - 1)[:, None])  # [B, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    return x


def pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: probs [..., V] (rows sum to ~1), u [...] in [0, 1) -> int64 [...]."""
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.dtype) * cdf[..., -1])[..., None]
    idx = torch.searchsorted(cdf, target, right=True)[..., 0]  # first index whose cdf exceeds the target
    return idx.clamp_max(probs.shape[-1] - 1)


def sample_rows(logits: torch.Tensor, rows: list[RowSampling], rngs: list[StreamRng]) -> tuple[np.ndarray, np.ndarray]:
    """Sample one token per row of logits [B, V].

    Returns (tokens int64 [B], last_p float64 [B]) on the host: last_p is each row's
    probability of the last vocabulary entry in the distribution it was sampled
    from (Bark's EOS rule reads it); greedy rows report 1.0 if they chose it, else 0.
    One host transfer for the batch.
    """
    x = logits.float()
    V = x.shape[-1]
    tokens = torch.argmax(x, dim=-1)  # [B]
    last_p = (tokens == V - 1).to(torch.float32)
    sampled = [i for i, r in enumerate(rows) if not r.greedy]
    if sampled:
        sel = upload(sampled, x.device)
        sub = [rows[i] for i in sampled]
        filtered = filter_logits(x[sel], [r.top_k for r in sub], [r.top_p for r in sub])
        temps = upload([r.temp for r in sub], x.device)
        probs = F.softmax(filtered / temps[:, None], dim=-1)
        u = upload(uniforms([rngs[i] for i in sampled], [1] * len(sampled)), x.device)
        tokens = tokens.index_copy(0, sel, pick(probs, u))
        last_p = last_p.index_copy(0, sel, probs[:, -1])
    both = torch.stack([tokens.to(torch.float64), last_p.to(torch.float64)]).cpu().numpy()
    return both[0].astype(np.int64), both[1]


def sample(
    logits: torch.Tensor,
    *,
    temp: float | None,
    top_k: int | None,
    top_p: float | None,
    generator: StreamRng,
) -> tuple[int, float]:
    """One row: logits [V] -> (index, probability of the last entry; see sample_rows)."""
    tokens, last_p = sample_rows(logits[None], [RowSampling(temp, top_k, top_p)], [generator])
    return int(tokens[0]), float(last_p[0])
