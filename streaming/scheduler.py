"""The scheduler decides; the engine executes.

Every tick the engine lists, per stream, what each stage could do next as
`Work` items (computed from stream state, no model involved). `Scheduler.plan`
turns them into ordered batches: each batch becomes one stage action over all
its streams (one model call, or one bookkeeping pass). It knows no model and is
unit-tested on plain `Work` lists.

Rules:
- Order follows the pipeline (semantic → coarse → fine → decode), so a token can
  flow through every stage in the tick it was made.
- Items of one stage with equal (action, key) share a batch, up to `max_batch`
  rows. Stages key only what truly cannot share a call (e.g. decode chunks of
  different lengths); ragged prompts and fine windows share one padded call.
- Prompt prefills are compute-bound: all prefills of a tick (semantic and
  coarse together) fit a budget of `prefill_tokens` computed positions, counted
  as a padded batch computes them (rows × longest prompt), so the decode steps
  of running streams keep their pace (vLLM's chunked-prefill idea, at the
  granularity of whole prompts). The first prefill of a tick always runs.
- Within a stage the streams with the least audio buffered (lowest priority)
  go first; work that needs a KV slot runs only while slots are free.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable

STAGES = ("semantic", "coarse", "fine", "decode")
PREFILL = "prefill"


@dataclass(frozen=True)
class Work:
    """One thing a stream's stage could do now."""

    stream: int  # stream id
    stage: str  # one of STAGES
    action: str  # the stage's verb: prefill | step | window | offline | chunk | finish
    key: Hashable = None  # items with equal (stage, action, key) may share a batch
    priority: float = 0.0  # lower runs first (e.g. seconds of audio buffered ahead)
    needs_slot: bool = False  # takes a KV-cache slot of this stage's model
    cost: int = 0  # positions computed (prefills: the prompt length)
    detail: object = None  # stage-private payload, handed back to the stage untouched


@dataclass(frozen=True)
class SchedulerConfig:
    prefill_tokens: int = 4096  # prompt positions prefilled per tick, all streams together (padded)
    max_batch: int = 128  # streams in one batched model call

    def __post_init__(self) -> None:
        if self.prefill_tokens < 1 or self.max_batch < 1:
            raise ValueError("SchedulerConfig: prefill_tokens and max_batch must be >= 1")


@dataclass
class Plan:
    batches: list[list[Work]] = field(default_factory=list)  # in execution order

    @property
    def empty(self) -> bool:
        return not self.batches


class _PrefillBudget:
    """Positions left for this tick's prefills, charged per batch as rows × longest prompt."""

    def __init__(self, tokens: int) -> None:
        self.left = tokens
        self.used = False

    def fits(self, rows: int, longest: int) -> bool:
        return rows * longest <= self.left or not self.used


class Scheduler:
    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()

    def plan(self, work: list[Work], free_slots: dict[str, int]) -> Plan:
        """Ordered batches for this tick. `free_slots[stage]` bounds items with needs_slot."""
        plan = Plan()
        budget = _PrefillBudget(self.config.prefill_tokens)
        by_stage: dict[str, list[Work]] = defaultdict(list)
        for w in work:
            by_stage[w.stage].append(w)
        for stage in STAGES:
            items = sorted(by_stage.get(stage, []), key=lambda w: (w.priority, w.stream))
            plan.batches.extend(self._stage_batches(items, free_slots.get(stage, 0), budget))
        return plan

    def _stage_batches(self, items: list[Work], free: int, budget: _PrefillBudget) -> list[list[Work]]:
        groups: dict[tuple[str, Hashable], list[Work]] = defaultdict(list)
        for w in items:
            if w.needs_slot:
                if free <= 0:
                    continue
                free -= 1
            groups[(w.action, w.key)].append(w)
        batches: list[list[Work]] = []
        for (action, _), group in groups.items():
            if action == PREFILL:
                group = self._within_budget(group, budget)
            for i in range(0, len(group), self.config.max_batch):
                batches.append(group[i:i + self.config.max_batch])
        return batches

    @staticmethod
    def _within_budget(group: list[Work], budget: _PrefillBudget) -> list[Work]:
        """The longest prefix of `group` (priority order) whose padded cost fits the tick's budget."""
        taken: list[Work] = []
        longest = 0
        for w in group:
            if not budget.fits(len(taken) + 1, max(longest, w.cost)):
                break
            taken.append(w)
            longest = max(longest, w.cost)
            budget.used = True  # only the tick's first prefill may exceed the budget
        budget.left -= len(taken) * longest
        return taken
