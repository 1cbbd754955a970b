"""How close a stream's audio must be when it was decoded in a batch with other streams.

The decode stage stacks the streams' EnCodec states and decodes every chunk due in
a tick in one call; batched convolution kernels may round differently from the
same kernel at batch 1. Measured: at most 8.2e-8 absolute at a peak of ~0.1
(random codec). Tokens are never allowed to differ; samples may by float rounding.
"""

from __future__ import annotations

import numpy as np

BATCH_F32_ATOL = 1e-6  # float32 samples: batched vs alone
S16_STEP = 1 / 32767  # on the s16 wire a rounding difference may flip one quantisation step


def assert_same_audio(got: np.ndarray, want: np.ndarray, *, s16: bool = False) -> None:
    """Equal length; every sample within float rounding (plus one step on the s16 wire)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    atol = BATCH_F32_ATOL + (S16_STEP if s16 else 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
