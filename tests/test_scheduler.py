"""The scheduler orders and batches work without any model."""

from __future__ import annotations

from streaming.scheduler import Scheduler, SchedulerConfig, Work


def stages(plan):
    return [(b[0].stage, b[0].action, [w.stream for w in b]) for b in plan.batches]


def test_pipeline_order_and_batching():
    """Batches follow semantic → coarse → fine → decode; every stream's step of a stage shares one batch."""
    work = [Work(2, "decode", "chunk", key=(8, "next")), Work(1, "coarse", "step"), Work(2, "coarse", "step"),
            Work(1, "semantic", "step"), Work(3, "semantic", "step"), Work(3, "fine", "window", cost=40),
            Work(1, "fine", "window", cost=200)]
    plan = Scheduler().plan(work, {"semantic": 4, "coarse": 4})
    assert stages(plan) == [("semantic", "step", [1, 3]), ("coarse", "step", [1, 2]),
                            ("fine", "window", [1, 3]), ("decode", "chunk", [2])]


def test_ragged_prefills_share_one_batch_within_the_token_budget():
    """Prefills of different lengths batch together, least-buffered first, while rows x longest fits the budget."""
    work = [Work(1, "coarse", "prefill", priority=2.0, cost=300), Work(2, "coarse", "prefill", priority=-1.0, cost=800),
            Work(3, "coarse", "prefill", priority=0.5, cost=500), Work(4, "coarse", "prefill", priority=3.0, cost=300)]
    plan = Scheduler(SchedulerConfig(prefill_tokens=2400)).plan(work, {"coarse": 8})
    assert stages(plan) == [("coarse", "prefill", [2, 3, 1])]  # 3 x 800 = 2400; a 4th row would need 3200


def test_prefill_budget_is_shared_by_stages_and_first_prefill_always_runs():
    """Semantic prefills spend the tick's budget before coarse ones; one over-budget prefill still runs alone."""
    work = [Work(1, "semantic", "prefill", cost=257, needs_slot=True), Work(2, "semantic", "prefill", cost=257,
            needs_slot=True), Work(3, "coarse", "prefill", cost=887)]
    plan = Scheduler(SchedulerConfig(prefill_tokens=600)).plan(work, {"semantic": 4, "coarse": 4})
    assert stages(plan) == [("semantic", "prefill", [1, 2])]  # 514 used: the coarse prefill waits a tick
    plan = Scheduler(SchedulerConfig(prefill_tokens=100)).plan([Work(3, "coarse", "prefill", cost=887)], {})
    assert stages(plan) == [("coarse", "prefill", [3])]


def test_slots_bound_new_streams():
    """Work that needs a KV slot is only scheduled while slots are free."""
    work = [Work(i, "semantic", "prefill", needs_slot=True, cost=257) for i in range(5)]
    plan = Scheduler().plan(work, {"semantic": 2})
    assert stages(plan) == [("semantic", "prefill", [0, 1])]


def test_keys_split_batches_and_batch_cap():
    """Decode chunks batch only with an equal key (length, phase); batches never exceed max_batch."""
    work = [Work(i, "decode", "chunk", key=(8, "first") if i % 2 else (16, "next")) for i in range(6)]
    plan = Scheduler(SchedulerConfig(max_batch=2)).plan(work, {})
    sizes = sorted((b[0].key, len(b)) for b in plan.batches)
    assert sizes == [((8, "first"), 1), ((8, "first"), 2), ((16, "next"), 1), ((16, "next"), 2)]


def test_bookkeeping_actions_batch_too():
    """finish items of many streams are one batch (one bookkeeping pass), not one per stream."""
    work = [Work(i, "decode", "finish") for i in range(5)] + [Work(9, "fine", "finish")]
    plan = Scheduler().plan(work, {})
    assert stages(plan) == [("fine", "finish", [9]), ("decode", "finish", [0, 1, 2, 3, 4])]


def test_empty_plan():
    """No work, no batches."""
    assert Scheduler().plan([], {"semantic": 1}).empty
