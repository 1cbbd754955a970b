"""The scheduler decides; the engine executes.

Every tick the engine lists, per stream, what each stage could do next as
`Work` items (computed from stream state, no model involved). `Scheduler.plan`
turns them into ordered batches: each batch becomes one model call. It knows
no model and is unit-tested on plain `Work` lists.

Order within a tick follows the pipeline (semantic → coarse → fine → decode)
so a token can flow through every stage in the tick it was made. Steps of
causal models batch across all streams (nearly free on CPU and GPU); prompt
prefills and fine windows are compute-bound, so coarse prefills are capped per
tick, and the streams with the least audio buffered go first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable

STAGES = ("semantic", "coarse", "fine", "decode")


@dataclass(frozen=True)
class Work:
    """One thing a stream's stage could do now."""

    stream: int  # stream id
    stage: str  # one of STAGES
    action: str  # prefill | decode | window | offline | chunk | finish
    key: Hashable = None  # items with equal (stage, action, key) may share a batch
    priority: float = 0.0  # lower runs first (e.g. seconds of audio buffered ahead)
    needs_slot: bool = False  # takes a KV-cache slot of this stage's model


@dataclass(frozen=True)
class SchedulerConfig:
    max_coarse_prefills: int = 1  # coarse window prefills per tick (each a full prompt pass)
    max_batch: int = 64  # streams in one batched model call

    def __post_init__(self) -> None:
        if self.max_coarse_prefills < 1 or self.max_batch < 1:
            raise ValueError("SchedulerConfig: max_coarse_prefills and max_batch must be >= 1")


@dataclass
class Plan:
    batches: list[list[Work]] = field(default_factory=list)  # in execution order

    @property
    def empty(self) -> bool:
        return not self.batches


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()

    def plan(self, work: list[Work], free_slots: dict[str, int]) -> Plan:
        """Ordered batches for this tick. `free_slots[stage]` bounds items with needs_slot."""
        plan = Plan()
        by_stage: dict[str, list[Work]] = defaultdict(list)
        for w in work:
            by_stage[w.stage].append(w)
        for stage in STAGES:
            items = sorted(by_stage.get(stage, []), key=lambda w: (w.priority, w.stream))
            plan.batches.extend(self._stage_batches(stage, items, free_slots.get(stage, 0)))
        return plan

    def _stage_batches(self, stage: str, items: list[Work], free: int) -> list[list[Work]]:
        batches: list[list[Work]] = []
        groups: dict[tuple[str, Hashable], list[Work]] = defaultdict(list)
        prefills = 0
        for w in items:
            if w.needs_slot:
                if free <= 0:
                    continue
                free -= 1
            if w.action in ("finish", "offline", "chunk"):
                batches.append([w])  # per-stream work, no shared model call
            elif stage == "coarse" and w.action == "prefill":
                if prefills < self.config.max_coarse_prefills:
                    batches.append([w])  # prompts differ in length: one at a time
                    prefills += 1
                elif w.needs_slot:
                    free += 1  # not scheduled after all
            else:
                groups[(w.action, w.key)].append(w)
        for group in groups.values():
            for i in range(0, len(group), self.config.max_batch):
                batches.append(group[i:i + self.config.max_batch])
        return batches
