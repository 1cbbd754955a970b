"""The scheduler orders and batches work without any model."""

from __future__ import annotations

from streaming.scheduler import Scheduler, SchedulerConfig, Work


def stages(plan):
    return [(b[0].stage, b[0].action, [w.stream for w in b]) for b in plan.batches]


def test_pipeline_order_and_batching():
    """Batches follow semantic → coarse → fine → decode; decode steps of all streams share one batch."""
    work = [Work(2, "decode", "chunk", key=8), Work(1, "coarse", "decode"), Work(2, "coarse", "decode"),
            Work(1, "semantic", "decode"), Work(3, "semantic", "decode"), Work(3, "fine", "window", key="W")]
    plan = Scheduler().plan(work, {"semantic": 4, "coarse": 4})
    assert stages(plan) == [("semantic", "decode", [1, 3]), ("coarse", "decode", [1, 2]),
                            ("fine", "window", [3]), ("decode", "chunk", [2])]


def test_coarse_prefills_capped_and_prioritised():
    """At most max_coarse_prefills window prefills per tick, the least-buffered stream first."""
    work = [Work(1, "coarse", "prefill", priority=2.0), Work(2, "coarse", "prefill", priority=-1.0),
            Work(3, "coarse", "prefill", priority=0.5)]
    plan = Scheduler(SchedulerConfig(max_coarse_prefills=2)).plan(work, {"coarse": 8})
    assert stages(plan) == [("coarse", "prefill", [2]), ("coarse", "prefill", [3])]


def test_slots_bound_new_streams():
    """Work that needs a KV slot is only scheduled while slots are free."""
    work = [Work(i, "semantic", "prefill", needs_slot=True) for i in range(5)]
    plan = Scheduler().plan(work, {"semantic": 2})
    assert stages(plan) == [("semantic", "prefill", [0, 1])]


def test_fine_windows_grouped_by_geometry_and_batch_cap():
    """Fine windows batch only with equal geometry; batches never exceed max_batch."""
    work = [Work(i, "fine", "window", key="A" if i % 2 else "B") for i in range(6)]
    plan = Scheduler(SchedulerConfig(max_batch=2)).plan(work, {})
    sizes = sorted((b[0].key, len(b)) for b in plan.batches)
    assert sizes == [("A", 1), ("A", 2), ("B", 1), ("B", 2)]


def test_per_stream_actions_are_single():
    """finish / offline / chunk items never share a batch."""
    work = [Work(1, "decode", "chunk", key=8), Work(2, "decode", "chunk", key=8), Work(3, "fine", "offline")]
    plan = Scheduler().plan(work, {})
    assert all(len(b) == 1 for b in plan.batches) and len(plan.batches) == 3


def test_empty_plan():
    """No work, no batches."""
    assert Scheduler().plan([], {"semantic": 1}).empty
