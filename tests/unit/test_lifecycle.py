"""The run lifecycle (RunService): start, retry and cancel, on the in-memory fakes of its
ports (tests/fakes.py). The same moves on PostgreSQL: tests/integration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest

from etl.domain.errors import (
    EnqueueFailed,
    IdempotencyConflict,
    RunNotCancellable,
    RunNotFound,
    RunNotRetryable,
)
from etl.domain.runs import ChunkState, RunState
from etl.service.lifecycle import RunService

from builders import failed_planned_run, finish_chunk, planned_run, run_in_state
from fakes import FakeLedger, FakeServices, RecordingEnqueue


@pytest.fixture
def service(fakes: FakeServices) -> RunService:
    return fakes.runs


@pytest.fixture
def ledger(fakes: FakeServices) -> FakeLedger:
    return fakes.ledger


# -- retry_run -----------------------------------------------------------------------------


def test_retrying_a_failed_planned_run_reopens_it_and_enqueues_its_plan_once(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)

    returned = service.retry_run(run_id)

    assert enqueue.calls == [("etl.plan_run", [run_id])]
    run = ledger.get_run(run_id)
    assert returned == run
    assert run.state is RunState.QUEUED  # plan_run admits it, then resumes its plan
    assert run.reason is None
    assert [c.state for c in ledger.get_chunks(run_id)] == [
        ChunkState.DONE,
        ChunkState.PENDING,
        ChunkState.PENDING,
    ]


def test_retrying_a_failed_run_that_was_never_planned_queues_it_and_enqueues_its_plan(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = run_in_state(ledger, RunState.FAILED)

    assert service.retry_run(run_id).state is RunState.QUEUED

    assert enqueue.calls == [("etl.plan_run", [run_id])]


@pytest.mark.parametrize(
    "state",
    [
        RunState.QUEUED,
        RunState.PLANNING,
        RunState.RUNNING,
        RunState.COMMITTING,
        RunState.SUCCEEDED,
        RunState.CANCELLED,
    ],
)
def test_a_run_that_is_not_failed_is_not_retryable_and_nothing_is_enqueued(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue, state: RunState
) -> None:
    run_id = run_in_state(ledger, state)
    before = ledger.get_run(run_id)

    with pytest.raises(RunNotRetryable, match=f"{run_id} is {state.value}"):
        service.retry_run(run_id)

    assert enqueue.calls == []
    assert ledger.get_run(run_id) == before


def test_a_second_retry_of_the_same_run_is_refused_and_enqueues_nothing_more(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)
    service.retry_run(run_id)

    with pytest.raises(RunNotRetryable):
        service.retry_run(run_id)

    assert enqueue.calls == [("etl.plan_run", [run_id])]


def test_a_retry_the_broker_refuses_fails_the_run_again_with_the_reason(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)
    enqueue.error = ConnectionRefusedError("broker down")

    with pytest.raises(EnqueueFailed) as caught:
        service.retry_run(run_id)

    assert run_id in str(caught.value)
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason is not None
    assert "retry" in run.reason and "broker down" in run.reason
    assert run.finished_at is not None
    # Failed again, so it can be retried again once the broker is back.
    enqueue.error = None
    assert service.retry_run(run_id).state is RunState.QUEUED
    assert enqueue.calls == [("etl.plan_run", [run_id])]


def test_retrying_an_unknown_run_is_run_not_found(
    service: RunService, enqueue: RecordingEnqueue
) -> None:
    with pytest.raises(RunNotFound, match="no-such-run"):
        service.retry_run("no-such-run")
    assert enqueue.calls == []


# -- cancel_run ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [RunState.QUEUED, RunState.PLANNING, RunState.RUNNING])
def test_an_unfinished_run_is_cancelled_with_the_reason(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue, state: RunState
) -> None:
    run_id = run_in_state(ledger, state)

    returned = service.cancel_run(run_id)

    run = ledger.get_run(run_id)
    assert returned == run
    assert run.state is RunState.CANCELLED
    assert run.reason == "cancelled by request"
    assert run.finished_at is not None
    assert enqueue.calls == []


def test_cancelling_twice_leaves_the_run_cancelled_without_an_error(
    service: RunService, ledger: FakeLedger
) -> None:
    run_id = run_in_state(ledger, RunState.RUNNING)
    first = service.cancel_run(run_id)

    second = service.cancel_run(run_id)

    assert second.state is RunState.CANCELLED
    assert second == first


@pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.FAILED, RunState.COMMITTING])
def test_a_run_that_ended_or_is_committing_is_not_cancellable_and_unchanged(
    service: RunService, ledger: FakeLedger, state: RunState
) -> None:
    run_id = run_in_state(ledger, state)
    before = ledger.get_run(run_id)

    with pytest.raises(RunNotCancellable, match=f"{run_id} is {state.value}"):
        service.cancel_run(run_id)

    assert ledger.get_run(run_id) == before


def test_cancelling_an_unknown_run_is_run_not_found(service: RunService) -> None:
    with pytest.raises(RunNotFound, match="no-such-run"):
        service.cancel_run("no-such-run")


# -- commit_if_complete --------------------------------------------------------------------


def test_the_chunk_that_completes_a_run_sends_its_commit_once(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = planned_run(ledger, chunks=3, done=2)

    assert not service.commit_if_complete(run_id)  # chunk 2 is not done yet
    assert ledger.get_run(run_id).state is RunState.RUNNING
    finish_chunk(ledger, run_id, 2)
    assert service.commit_if_complete(run_id)
    # Every other delivery, at once or later, finds the run committing: nothing more sent.
    assert not service.commit_if_complete(run_id)

    assert enqueue.calls == [("etl.commit_run", [run_id])]
    assert ledger.get_run(run_id).state is RunState.COMMITTING


def test_a_redelivered_chunk_sends_the_commit_of_a_committing_run_again(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    # The first delivery claimed the commit and died before sending it.
    run_id = planned_run(ledger, chunks=2, done=2)
    assert ledger.claim_commit(run_id)

    assert not service.commit_if_complete(run_id)
    assert service.commit_if_complete(run_id, again=True)

    assert enqueue.calls == [("etl.commit_run", [run_id])]


@pytest.mark.parametrize("state", [RunState.CANCELLED, RunState.FAILED])
def test_a_run_that_ended_is_not_committed_when_its_chunks_are_done(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue, state: RunState
) -> None:
    run_id = planned_run(ledger, chunks=2, done=2)
    assert ledger.move_run(run_id, state)

    assert not service.commit_if_complete(run_id, again=True)
    assert enqueue.calls == []
    assert ledger.get_run(run_id).state is state


def test_a_commit_the_broker_refuses_is_left_to_the_reconciler(
    service: RunService, ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = planned_run(ledger, chunks=1, done=1)
    enqueue.error = ConnectionRefusedError("broker down")

    # Not raised: the chunk's work is recorded; the run waits, committing, for the
    # reconciler to send its commit (reconcile: "stuck committing").
    assert not service.commit_if_complete(run_id)
    assert ledger.get_run(run_id).state is RunState.COMMITTING


def test_a_request_without_a_date_repeated_after_midnight_finds_its_run(
    service: RunService, enqueue: RecordingEnqueue
) -> None:
    def at(day: int) -> Callable[[], datetime]:
        return lambda: datetime(2026, 11, day, 23, 59, 30, tzinfo=UTC)

    first, created = service.start_run("orders_daily", idempotency_key="k-1", clock=at(5))
    # The client's retry lands after midnight: the derived date would be a day later.
    again, created_again = service.start_run("orders_daily", idempotency_key="k-1", clock=at(6))

    assert (created, created_again) == (True, False)
    assert again.id == first.id and again.logical_date == date(2026, 11, 4)
    assert len(enqueue.calls) == 1
    # Naming a date makes it another request, which the key cannot be reused for.
    with pytest.raises(IdempotencyConflict):
        service.start_run(
            "orders_daily", interval=date(2026, 11, 4), idempotency_key="k-1", clock=at(6)
        )


def test_a_new_run_is_logged_with_its_run_id_where_its_trail_starts(
    service: RunService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="etl.service.lifecycle")

    run, _ = service.start_run("orders_daily", interval=date(2026, 11, 4))

    [record] = [r for r in caplog.records if r.name == "etl.service.lifecycle"]
    assert getattr(record, "run_id", None) == run.id
    assert record.getMessage() == f"created run {run.id}: orders_daily 2026-11-04 (manual)"
