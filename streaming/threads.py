"""Keep model compute on the engine thread's own OpenMP pool.

OpenMP thread pools belong to the thread that first runs a parallel op. If the
main thread runs torch ops with several threads (loading weights does), its
pool's workers compete with the engine thread's pool: on the 2-core test
machine engine steps ran ~35 % slower than the same code with all compute in
one thread (bench notes in README). So programs that run an Engine call
`serial_main_thread()` first thing: the main thread then computes with one
thread, and the engine thread uses `compute_threads()` threads.
"""

from __future__ import annotations

import torch

_COMPUTE_THREADS = torch.get_num_threads()  # intra-op threads torch chose for this machine


def compute_threads() -> int:
    """Threads the engine thread computes with (torch's default for this machine)."""
    return _COMPUTE_THREADS


def serial_main_thread() -> None:
    """Make the calling thread compute single-threaded; call before it loads models."""
    torch.set_num_threads(1)
