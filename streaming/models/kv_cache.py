"""A preallocated key/value cache with one slot per concurrent stream.

Nothing grows during decoding: each slot owns a fixed `[n_head, max_len, head_dim]`
region per layer, and a stream's length says how much of it is valid. A freed
slot is reused by the next stream without reallocating.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Keys and values for `n_slots` streams of up to `max_len` positions."""

    n_layer: int
    n_slots: int
    n_head: int
    max_len: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    kernel: str | None = None  # decode attention: "sdpa", "matmul", or None = by device
    # k, v: [n_layer, n_slots, n_head, max_len, head_dim]; zero-filled so that
    # unused positions never hold NaN/inf.
    k: torch.Tensor = field(init=False, repr=False)
    v: torch.Tensor = field(init=False, repr=False)
    lengths: list[int] = field(init=False)  # valid positions per slot (host-side)
    _free: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        shape = (self.n_layer, self.n_slots, self.n_head, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.lengths = [0] * self.n_slots
        self._free = list(range(self.n_slots - 1, -1, -1))  # pop() hands out slot 0 first

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """Take a free slot (length 0). Raises RuntimeError when none is left."""
        if not self._free:
            raise RuntimeError(f"KV cache full: all {self.n_slots} slots are in use")
        slot = self._free.pop()
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        """Give a slot back; its contents are simply overwritten by the next user."""
        assert 0 <= slot < self.n_slots and slot not in self._free, f"bad release of slot {slot}"
        self.lengths[slot] = 0
        self._free.append(slot)

    def reset(self, slot: int) -> None:
        """Forget a slot's contents but keep it (e.g. a new coarse window)."""
        self.lengths[slot] = 0
