"""Moving small host values to the model's device without stalling it.

`torch.tensor(values, device="cuda")` copies from pageable memory, which waits for
the GPU to finish the work already queued: a host synchronisation in the middle
of a tick. `upload` stages the values in pinned memory and copies them
asynchronously on the current stream (torch keeps the pinned block alive until
the copy is done); on a CPU it is a plain tensor.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def upload(values: Sequence[int] | Sequence[float] | np.ndarray, device: torch.device,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host values -> a tensor on `device` (asynchronous on CUDA)."""
    t = torch.as_tensor(np.asarray(values)) if isinstance(values, np.ndarray) else torch.tensor(values)
    if dtype is not None:
        t = t.to(dtype)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
