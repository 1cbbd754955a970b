"""Decode steps at static shapes: bucketed batch sizes and cache lengths, optionally replayed from CUDA graphs.

A decode step of Bark's GPTs is a few hundred small kernels; in eager PyTorch a GPU
spends more time launching them than running them. A CUDA graph replays a
captured step with one launch, but only for the exact shapes and memory it was
captured with. So the step is made static:

- the batch is padded to a bucket (1, 2, 4, ... 128 rows); padding rows point at a
  scratch KV slot that no stream owns, at position 0, so whatever they write is never read;
- every row reads the cache up to a bucketed length (multiples of `len_step`
  positions), with its own positions masked on the device;
- tokens, slots and positions live in static device tensors, refreshed in place
  before each step (one asynchronous host-to-device copy).

Eager and graph replay run the same `GPT.decode_at`, so the CPU tests of this
module prove the bucketing, padding and static indices give tokens identical to
the dynamic path; on a GPU the graphs are captured at warm-up, before the
server's port opens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .gpt import GPT, DecodeIndex
from .kv_cache import KVCache

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LEN_STEP = 256  # cache lengths are read in multiples of this many positions


def batch_bucket(n: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    """The smallest bucket that holds n rows."""
    for b in buckets:
        if b >= n:
            return b
    raise ConfigError(f"a batch of {n} rows exceeds the largest static bucket ({buckets[-1]}); "
                      "lower max_streams or the scheduler's max_batch")


def length_bucket(length: int, max_len: int, step: int = LEN_STEP) -> int:
    """Positions a step reads: `length` rounded up to a multiple of `step`, at most max_len."""
    return min(max_len, -(-length // step) * step)


@dataclass
class _Buffers:
    """Static inputs and output of one (batch, length) bucket."""

    tokens: torch.Tensor  # int64 [B]
    slots: torch.Tensor  # int64 [B]
    positions: torch.Tensor  # int64 [B]
    out: torch.Tensor | None = None  # logits [B, V] written by the captured step
    graph: object | None = None  # torch.cuda.CUDAGraph


class StaticDecoder:
    """Runs `model.decode` for any set of slots at bucketed static shapes.

    The cache must keep one slot for padding rows: pass `scratch`, a slot taken with
    `cache.allocate()` that no stream ever gets.
    """

    def __init__(self, model: GPT, cache: KVCache, scratch: int, rows: tuple[int, int] | None = None, *,
                 graphs: bool = False, buckets: tuple[int, ...] = BATCH_BUCKETS, len_step: int = LEN_STEP) -> None:
        device = cache.k.device
        if graphs and device.type != "cuda":
            raise ConfigError(f"cuda_graphs: needs a CUDA device, the model is on {device}; "
                              "turn CUDA graphs off (drop --cuda-graphs) on this machine")
        self.model, self.cache, self.scratch, self.rows = model, cache, scratch, rows
        self.graphs, self.buckets, self.len_step = graphs, buckets, len_step
        self.device = device
        self._buffers: dict[tuple[int, int], _Buffers] = {}
        self._pool = None
        self.replays = 0  # steps served by a captured graph

    # ---------------------------------------------------------------- the step
    def __call__(self, tokens: list[int], slots: list[int]) -> torch.Tensor:
        """Feed tokens[i] to the stream in slots[i]; returns its logits [n, V] (or the `rows`)."""
        n = len(slots)
        positions = [self.cache.lengths[s] for s in slots]
        assert max(positions) < self.cache.max_len, "a stream ran past the end of its KV cache slot"
        B = batch_bucket(n, self.buckets)
        L = length_bucket(max(positions) + 1, self.cache.max_len, self.len_step)
        buf = self._buffers.get((B, L)) or self._make(B, L)
        pad = B - n
        staged = torch.tensor([list(tokens) + [0] * pad, list(slots) + [self.scratch] * pad,
                               positions + [0] * pad])  # [3, B] on the host
        if self.device.type == "cuda":
            staged = staged.pin_memory()
        dev = staged.to(self.device, non_blocking=True)
        buf.tokens.copy_(dev[0])
        buf.slots.copy_(dev[1])
        buf.positions.copy_(dev[2])
        if buf.graph is not None:
            buf.graph.replay()
            out = buf.out
            self.replays += 1
        else:
            out = self._step(buf, L)
        for s in slots:
            self.cache.lengths[s] += 1
        return out[:n]

    def _step(self, buf: _Buffers, L: int) -> torch.Tensor:
        return self.model.decode_at(buf.tokens, self.cache, DecodeIndex.static(buf.slots, buf.positions, L), self.rows)

    def _make(self, B: int, L: int) -> _Buffers:
        zeros = lambda: torch.zeros(B, dtype=torch.long, device=self.device)  # noqa: E731
        buf = _Buffers(zeros(), zeros() + self.scratch, zeros())
        self._buffers[(B, L)] = buf
        return buf

    # ---------------------------------------------------------------- capture
    def capture(self) -> int:
        """Capture one CUDA graph per (batch bucket, length bucket); returns how many (0 when graphs are off).

        Captured steps write only the scratch slot (every row points at it) while
        capturing, so no stream's cache is touched.
        """
        if not self.graphs:
            return 0
        lengths = sorted({length_bucket(m, self.cache.max_len, self.len_step)
                          for m in range(1, self.cache.max_len + 1, self.len_step)})  # every bucket a step can use
        side = torch.cuda.Stream()
        self._pool = torch.cuda.graph_pool_handle()
        for B in self.buckets:
            for L in lengths:
                buf = self._buffers.get((B, L)) or self._make(B, L)
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm the kernels (and cuBLAS workspaces) outside the capture
                        self._step(buf, L)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    buf.out = self._step(buf, L)
                buf.graph = graph
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs of the decode step", len(self._buffers))
        return len(self._buffers)
