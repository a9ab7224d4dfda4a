"""Every way a run ends goes through the run lifecycle: the state is recorded, counted
once in ``etl_runs_finished_total`` and the run waiting for its place is admitted (its
plan sent). On the in-memory fakes; the same endings on PostgreSQL, and the dead-letter
ending from a message RabbitMQ parked, are in tests/integration/test_lifecycle_postgres.py.

Each test holds the one place of a pipeline with ``max_active_runs=1`` with one run
(``holder``), queues a second (``waiting``), ends the holder one way, and ends it (or
tries to) a second time, as a twin delivery or a second reconciler would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from scheduling_pipelines import EVENTS_INCREMENTAL

from etl.domain.errors import EnqueueFailed, PlanTooLarge
from etl.domain.runs import ChunkState, RunState
from etl.pipelines import PIPELINES, get_pipeline
from etl.service import execution as steps
from etl.service.backfills import cancel_backfill, start_backfill
from etl.service.reconcile import reconcile
from etl.worker.tasks import give_up

from builders import DAY, new_run, sample_rows
from fakes import FakeServices, ListSource

SINGLE = "orders_one_place"  # orders_daily with one place and 2 chunks of 500 keys
PLAN = "etl.plan_run"


@pytest.fixture
def fakes(fakes: FakeServices) -> Iterator[FakeServices]:
    """The fakes with SINGLE registered and given 1,000 sample orders."""
    single = dataclasses.replace(
        get_pipeline("orders_daily"), name=SINGLE, max_active_runs=1, chunk_size=500
    )
    PIPELINES[SINGLE] = single
    fakes.sources[SINGLE] = ListSource(sample_rows(1000))
    yield fakes
    del PIPELINES[SINGLE]


def finished(state: RunState, pipeline: str = SINGLE) -> float:
    """etl_runs_finished_total of the pipeline in that state, as this process counted it."""
    labels = {"pipeline": pipeline, "state": state.value}
    return REGISTRY.get_sample_value("etl_runs_finished_total", labels) or 0.0


def rows_written(pipeline: str = SINGLE) -> float:
    """etl_rows_written_total of the pipeline, as this process counted it."""
    return REGISTRY.get_sample_value("etl_rows_written_total", {"pipeline": pipeline}) or 0.0


def holder_and_waiting(fakes: FakeServices, pipeline: str = SINGLE) -> tuple[str, str]:
    """A running run holding the pipeline's place and a queued run waiting for it; the
    enqueue port's record starts empty after them."""
    holder = new_run(fakes.ledger, pipeline=pipeline, day=DAY)
    waiting = new_run(fakes.ledger, pipeline=pipeline, day=DAY + timedelta(days=1))
    assert steps.plan_run(fakes, holder)  # admitted, planned, running
    assert steps.plan_run(fakes, waiting) is None  # no place: it stays queued
    assert fakes.ledger.get_run(waiting).state is RunState.QUEUED
    fakes.enqueue.calls.clear()
    return holder, waiting


def assert_ended_once(
    fakes: FakeServices,
    run_id: str,
    state: RunState,
    counted_before: float,
    waiting: str,
    pipeline: str = SINGLE,
) -> None:
    """The run is in ``state``, counted once, and the waiting run's plan was sent."""
    assert fakes.ledger.get_run(run_id).state is state
    assert finished(state, pipeline) - counted_before == 1
    assert (PLAN, [waiting]) in fakes.enqueue.calls


def test_a_commit_refused_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices,
) -> None:
    holder, waiting = holder_and_waiting(fakes)
    steps.transform_chunk(fakes, holder, 0)  # chunk 1 never done
    before = finished(RunState.FAILED)

    first = steps.commit_run(fakes, holder)
    again = steps.commit_run(fakes, holder)  # the chord's and the reconciler's commit

    assert first.reason is not None and first.reason.startswith("commit refused: ")
    assert again == fakes.ledger.get_run(holder)
    assert_ended_once(fakes, holder, RunState.FAILED, before, waiting)


def test_a_commit_whose_watermark_moved_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = EVENTS_INCREMENTAL.name  # incremental, one place
    monkeypatch.setitem(PIPELINES, events, EVENTS_INCREMENTAL)
    moment = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [{"id": i, "updated_at": moment, "payload": f"e{i}"} for i in range(1, 9)]
    fakes.sources[events] = ListSource(rows, source_now=moment + timedelta(hours=1))
    holder, waiting = holder_and_waiting(fakes, events)
    for chunk in fakes.ledger.get_chunks(holder):
        steps.transform_chunk(fakes, holder, chunk.index)
    # Another run committed a window meanwhile: the holder's window no longer starts there.
    fakes.ledger.watermarks[events] = moment
    before = finished(RunState.FAILED, events)

    ended = steps.commit_run(fakes, holder)
    steps.commit_run(fakes, holder)

    assert ended.reason is not None and "a later run has already committed" in ended.reason
    assert_ended_once(fakes, holder, RunState.FAILED, before, waiting, events)


def test_the_deadline_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices,
) -> None:
    holder, waiting = holder_and_waiting(fakes)
    started = fakes.ledger.get_run(holder).started_at
    assert started is not None
    before = finished(RunState.FAILED)

    def reconcile_at(moment: datetime) -> list[str]:
        # Nothing is stale yet: only the deadline acts, so what is sent is the lifecycle's.
        return reconcile(fakes.runs, now=moment, stale_after_s=10**6, deadline_s=60)

    first = reconcile_at(started + timedelta(seconds=61))
    second = reconcile_at(started + timedelta(seconds=62))

    assert [line for line in first if holder in line] == [
        f"failed run {holder}: deadline exceeded: still running after 60 s with 2 chunks unfinished"
    ]
    assert not [line for line in second if holder in line]
    assert_ended_once(fakes, holder, RunState.FAILED, before, waiting)
    assert fakes.enqueue.calls == [(PLAN, [waiting])]


def test_a_cancel_ends_the_run_once_counted_as_cancelled_and_admits_the_waiting_run(
    fakes: FakeServices,
) -> None:
    holder, waiting = holder_and_waiting(fakes)
    before = finished(RunState.CANCELLED)

    fakes.runs.cancel_run(holder)
    fakes.runs.cancel_run(holder)  # a second request finds it cancelled, without an error

    assert_ended_once(fakes, holder, RunState.CANCELLED, before, waiting)


def test_cancelling_a_backfill_counts_each_of_its_runs_once_and_admits_a_waiting_run(
    fakes: FakeServices,
) -> None:
    later = DAY + timedelta(days=10)
    backfill, _ = start_backfill(
        fakes.runs, SINGLE, start=DAY, end=DAY + timedelta(1), max_active=1
    )
    assert backfill is not None
    first, second = (run.id for run in fakes.ledger.backfill_runs(backfill.id))
    assert steps.plan_run(fakes, first)  # holds the pipeline's place; second waits
    waiting = new_run(fakes.ledger, pipeline=SINGLE, day=later)
    fakes.enqueue.calls.clear()
    before = finished(RunState.CANCELLED)

    runs = cancel_backfill(fakes.runs, backfill.id)
    cancel_backfill(fakes.runs, backfill.id)

    assert {run.state for run in runs} == {RunState.CANCELLED}
    assert finished(RunState.CANCELLED) - before == 2
    assert fakes.enqueue.calls == [(PLAN, [waiting])]
    assert second not in str(fakes.enqueue.calls)


@pytest.mark.parametrize("chunk_index", [None, 1])
def test_a_task_giving_up_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices, chunk_index: int | None
) -> None:
    holder, waiting = holder_and_waiting(fakes)
    before = finished(RunState.FAILED)

    give_up(fakes, holder, "commit failed: boom", chunk_index)  # type: ignore[arg-type]
    give_up(fakes, holder, "commit failed: boom", chunk_index)  # type: ignore[arg-type]

    assert_ended_once(fakes, holder, RunState.FAILED, before, waiting)
    if chunk_index is not None:
        assert fakes.ledger.get_chunk(holder, chunk_index).state is ChunkState.FAILED


def test_a_refused_plan_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices,
) -> None:
    holder = new_run(fakes.ledger, pipeline=SINGLE, day=DAY)
    waiting = new_run(fakes.ledger, pipeline=SINGLE, day=DAY + timedelta(days=1))
    fakes.settings = fakes.settings.model_copy(update={"max_chunks_per_run": 1})
    before = finished(RunState.FAILED)

    with pytest.raises(PlanTooLarge):
        steps.plan_run(fakes, holder)  # admitted, then refused: 2 chunks over a limit of 1
    assert steps.plan_run(fakes, holder) is None  # the plan task delivered again

    assert fakes.ledger.get_chunks(holder) == []
    assert_ended_once(fakes, holder, RunState.FAILED, before, waiting)


class RefusesFirst:
    """An Enqueue port whose broker refuses the first publish, then takes the others."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.refused = False

    def __call__(self, name: str, args: list[Any]) -> None:
        if not self.refused:
            self.refused = True
            raise ConnectionRefusedError("broker down")
        self.calls.append((name, args))


def test_a_start_the_broker_refuses_ends_the_run_once_and_admits_the_waiting_run(
    fakes: FakeServices,
) -> None:
    # A run queued earlier whose place is free: its plan was lost, say.
    waiting = new_run(fakes.ledger, pipeline=SINGLE, day=DAY - timedelta(days=1))
    enqueue = RefusesFirst()
    fakes = dataclasses.replace(fakes, enqueue=enqueue)  # type: ignore[arg-type]
    before = finished(RunState.FAILED)

    with pytest.raises(EnqueueFailed):
        fakes.runs.start_run(SINGLE, interval=DAY)

    [refused] = [run for run in fakes.ledger.runs.values() if run.logical_date == DAY]
    assert refused.reason is not None and "broker down" in refused.reason
    assert finished(RunState.FAILED) - before == 1
    assert enqueue.calls == [(PLAN, [waiting])]


def test_a_retry_the_broker_refuses_is_counted_once_more(fakes: FakeServices) -> None:
    holder, _ = holder_and_waiting(fakes)
    fakes.runs.end_run(holder, RunState.FAILED, "chunk 0 failed: boom")
    enqueue = RefusesFirst()
    fakes = dataclasses.replace(fakes, enqueue=enqueue)  # type: ignore[arg-type]
    before = finished(RunState.FAILED)

    with pytest.raises(EnqueueFailed):
        fakes.runs.retry_run(holder)

    assert fakes.ledger.get_run(holder).state is RunState.FAILED
    assert finished(RunState.FAILED) - before == 1


def test_a_backfill_the_broker_refuses_fails_each_of_its_runs_once(
    fakes: FakeServices,
) -> None:
    fakes = dataclasses.replace(fakes, enqueue=RefusesFirst())  # type: ignore[arg-type]
    before = finished(RunState.FAILED)

    with pytest.raises(EnqueueFailed):
        start_backfill(fakes.runs, SINGLE, start=DAY, end=DAY + timedelta(2), max_active=3)

    assert {run.state for run in fakes.ledger.runs.values()} == {RunState.FAILED}
    assert finished(RunState.FAILED) - before == 3


def test_ending_a_run_as_anything_but_failed_or_cancelled_is_refused(
    fakes: FakeServices,
) -> None:
    holder, _ = holder_and_waiting(fakes)
    with pytest.raises(ValueError, match="failed or cancelled"):
        fakes.runs.end_run(holder, RunState.SUCCEEDED, "no")
    assert fakes.ledger.get_run(holder).state is RunState.RUNNING


# -- after a run ended, its chunks do no work ---------------------------------------------


def test_a_chunk_message_of_a_failed_run_starts_nothing_and_counts_no_rows(
    fakes: FakeServices,
) -> None:
    holder, _ = holder_and_waiting(fakes)
    fakes.runs.end_run(holder, RunState.FAILED, "chunk 0 failed: boom")
    written = rows_written()

    assert steps.transform_chunk(fakes, holder, 1) is None

    chunk = fakes.ledger.get_chunk(holder, 1)
    assert (chunk.state, chunk.attempts) == (ChunkState.PENDING, 0)
    assert fakes.parts.keys() == []
    assert rows_written() == written


class EndsTheRunWhileRead(ListSource):
    """A source whose first read happens while another process fails the run."""

    def __init__(self, fakes: FakeServices, run_id: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(rows)
        self.fakes, self.run_id = fakes, run_id

    def read_range(self, *args: Any, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
        self.fakes.runs.end_run(self.run_id, RunState.FAILED, "chunk 0 failed: boom")
        yield from super().read_range(*args, **kwargs)


def test_a_chunk_that_finishes_after_its_run_failed_is_not_recorded_nor_counted(
    fakes: FakeServices,
) -> None:
    holder, _ = holder_and_waiting(fakes)
    fakes.sources[SINGLE] = EndsTheRunWhileRead(fakes, holder, sample_rows(1000))
    written = rows_written()

    assert steps.transform_chunk(fakes, holder, 1) is None

    # Not done, and not left "running" under an ended run: back to pending, as a retry
    # of the failed run will find it.
    released = fakes.ledger.get_chunk(holder, 1)
    assert released.state is ChunkState.PENDING
    assert released.error == "the run ended before this chunk's part was recorded"
    assert rows_written() == written
