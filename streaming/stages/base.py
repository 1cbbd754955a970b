"""The one contract every stage speaks.

A stage owns one step of the pipeline (its model, its caches, its typed state on
each segment) and answers three questions:

    work(seg, policy)            -> StageWork | None   what it could do for this segment now
                                                       (pure: reads state, changes nothing)
    run(action, segs, params, items)                   do `action` for a whole batch of segments:
                                                       one model call (or one bookkeeping pass)
    release(seg)                                       give back what the segment holds (slots)

`StageWork` is plain data: the scheduler batches items of the same stage, action
and key, and bounds prefills by their `cost`, without knowing any model.
Results are published on the segment (tokens, fine frames, PCM) for the next
stage and for the engine to emit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Protocol

from ..params import SamplingParams, StreamPolicy
from ..segment import Segment


@dataclass(frozen=True)
class StageWork:
    """What one segment's stage can do now."""

    action: str  # the stage's own verb: prefill, step, window, offline, chunk, finish
    key: Hashable = None  # items of one stage and action batch together only if their keys are equal
    cost: int = 0  # positions a prefill or window computes (the scheduler's per-tick budget)
    needs_slot: bool = False  # takes a KV-cache slot of this stage's model
    detail: object = None  # stage-private payload handed back to run() (e.g. a fine window's geometry)


class Stage(Protocol):
    name: str
    model_actions: frozenset[str]  # actions that call a model (the others are bookkeeping)

    def work(self, seg: Segment, policy: StreamPolicy) -> StageWork | None: ...

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams],
            items: list[StageWork]) -> None: ...

    def release(self, seg: Segment) -> None: ...

    def free_slots(self) -> int: ...


def by_slot(slots: list[int]) -> list[int]:
    """Row order that sorts a batch by KV slot (consecutive slots then read the cache as views)."""
    return sorted(range(len(slots)), key=slots.__getitem__)
