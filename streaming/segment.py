"""One piece of an utterance as it moves through the stages.

A long request is split into segments (sentences grouped within Bark's limits).
Each segment runs semantic → coarse → fine → decode on its own, with a voice
history; stages publish their output here for the next stage to read:

    semantic  list[int]                 tokens, appended one by one
    coarse    list[int]                 flat interleaved coarse tokens (offset ids)
    fine      np.ndarray int64 [8, T]   final fine frames, grown window by window

Each stage also keeps its private, typed state on the segment (`sem`, `co`,
`fi`, `dec`); a stage never writes another stage's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .constants import N_FINE_CODEBOOKS
from .prompts import unflatten_coarse
from .sampling import StreamRng


class RowFailures(Exception):
    """Some rows of a batch failed after the model call; the others were applied.

    `failures` holds (row index, exception); the engine ends only those streams.
    """

    def __init__(self, failures: list[tuple[int, BaseException]]) -> None:
        super().__init__(f"{len(failures)} row(s) failed: {failures[0][1]!r}")
        self.failures = failures


def for_each_row(items, fn) -> None:
    """Apply fn(*item) to every item; collect failures instead of stopping at the first."""
    failures = []
    for i, item in enumerate(items):
        try:
            fn(*item)
        except Exception as exc:  # isolated per stream by the engine
            failures.append((i, exc))
    if failures:
        raise RowFailures(failures)


@dataclass
class SemanticState:
    slot: int | None = None  # text-model KV slot while generating
    pending: int | None = None  # last sampled token, fed at the next decode step
    done: bool = False


@dataclass
class CoarseState:
    sem_hist: np.ndarray  # int64 [Hs] voice semantic history (trimmed as Bark does)
    coarse_hist: np.ndarray  # int64 [Hc] flat coarse history tokens
    slot: int | None = None  # coarse-model KV slot while generating
    n_step: int = 0  # coarse tokens generated so far
    window_pos: int = 0  # tokens generated in the current window (0 = no window open)
    pending: int | None = None  # last sampled token, fed at the next decode step
    done: bool = False
    window_prompt: np.ndarray | None = None  # the open window's prompt (to rebuild its cache after eviction)
    # The next window's prompt prefix, computed while this window decodes (stages/coarse.py):
    prefix: np.ndarray | None = None  # its tokens (None: not started)
    prefix_slot: int | None = None  # the KV slot it is computed in (becomes `slot` when the window opens)
    prefix_done: int = 0  # positions of `prefix` already in prefix_slot


@dataclass
class FineState:
    hist: np.ndarray  # int64 [8, H] voice fine history (<= 512 frames)
    done: bool = False
    windows: int = 0  # model windows run


@dataclass
class DecodeState:
    decoder: object | None = None  # per-segment streaming decoder
    n_decoded: int = 0  # fine frames decoded so far
    chunks: int = 0  # decode calls so far
    done: bool = False
    pcm: list[np.ndarray] = field(default_factory=list)  # decoded, not yet taken by the engine


@dataclass
class Segment:
    """Text to speak plus everything generated for it so far."""

    index: int
    text: str
    text_ids: list[int]
    voice: object | None  # the history (Voice-like: .semantic, .coarse, .fine) or None
    generator: StreamRng  # this segment's random numbers (seeded per segment)
    semantic: list[int] = field(default_factory=list)
    coarse: list[int] = field(default_factory=list)
    fine: np.ndarray = field(default_factory=lambda: np.zeros((N_FINE_CODEBOOKS, 0), dtype=np.int64))
    sem: SemanticState = field(default_factory=SemanticState)
    co: CoarseState | None = None  # created by the coarse stage on first use
    fi: FineState | None = None  # created by the fine stage on first use
    dec: DecodeState = field(default_factory=DecodeState)
    start_sample: int | None = None  # first output sample of this segment
    # The stream's pace, refreshed by the engine each tick: (audio seconds made ahead of the wall clock since
    # submit, audio seconds made per wall second). The fine stage sizes its windows by it.
    pace: tuple[float, float] = (0.0, 0.0)
    n_samples: int = 0  # PCM samples decoded for this segment
    end_sample: int | None = None

    @property
    def n_coarse_frames(self) -> int:
        return len(self.coarse) // 2

    @property
    def coarse_codes(self) -> np.ndarray:
        """int64 [2, n] codebook codes of the complete frames so far."""
        return unflatten_coarse(np.asarray(self.coarse[: 2 * self.n_coarse_frames], dtype=np.int64))
