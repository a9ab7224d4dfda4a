"""The reconciler on the in-memory fakes of its ports (tests/fakes.py). Time is never waited
for: each test passes a ``now`` chosen relative to what the ledger recorded."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta

import pytest

from etl.domain.runs import RunState
from etl.service.lifecycle import RunService
from etl.service.reconcile import reconcile

from builders import new_run as new_run_on
from builders import planned_run as running_run
from fakes import FakeLedger, FakeServices, RecordingEnqueue

STALE_S = 300
DEADLINE_S = 6 * 3600


@pytest.fixture
def ledger(fakes: FakeServices) -> FakeLedger:
    return fakes.ledger


def run_reconcile(ledger: FakeLedger, enqueue: RecordingEnqueue, now: datetime) -> list[str]:
    runs = RunService(ledger, enqueue)
    return reconcile(runs, now=now, stale_after_s=STALE_S, deadline_s=DEADLINE_S)


def new_run(ledger: FakeLedger, day: int = 1) -> str:
    return new_run_on(ledger, day=date(2026, 11, day))


def idle_for(ledger: FakeLedger, run_id: str, seconds: float) -> datetime:
    """The moment at which the run will have had no activity for ``seconds``."""
    return ledger.last_activity(run_id) + timedelta(seconds=seconds)


# -- lost commits --------------------------------------------------------------------------


def test_a_stale_run_with_every_chunk_done_gets_its_commit_sent_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=3, done=3)

    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert enqueue.calls == [("etl.commit_run", [run_id])]
    assert len(actions) == 1 and run_id in actions[0] and "commit" in actions[0]
    assert ledger.get_run(run_id).state is RunState.RUNNING  # the commit task moves it


def test_a_run_with_every_chunk_done_is_left_alone_until_it_is_stale(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=3, done=3)

    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S - 1))

    assert (actions, enqueue.calls) == ([], [])


def test_the_reconciler_sends_the_commit_again_on_every_pass_while_the_run_is_stale(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    # Documented behaviour: a second commit is harmless (commit_run skips a run that
    # ended), so the reconciler keeps no memory of what it sent.
    run_id = running_run(ledger, chunks=2, done=2)
    now = idle_for(ledger, run_id, STALE_S + 1)

    run_reconcile(ledger, enqueue, now)
    run_reconcile(ledger, enqueue, now + timedelta(seconds=60))

    assert enqueue.calls == [("etl.commit_run", [run_id]), ("etl.commit_run", [run_id])]


def test_a_stale_run_of_zero_chunks_gets_its_commit_sent_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=0)

    run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert enqueue.calls == [("etl.commit_run", [run_id])]


@pytest.mark.parametrize("done", [0, 2])
def test_a_stale_running_run_with_a_chunk_in_progress_is_not_redispatched(
    ledger: FakeLedger, enqueue: RecordingEnqueue, done: int
) -> None:
    run_id = running_run(ledger, chunks=3, done=done)
    ledger.start_chunk(run_id, done)
    before = ledger.get_run(run_id)

    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert (actions, enqueue.calls) == ([], [])
    assert ledger.get_run(run_id) == before


def test_a_run_stuck_committing_gets_its_commit_sent_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=2, done=2)
    assert ledger.move_run(run_id, RunState.COMMITTING)

    assert run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S - 1)) == []
    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert enqueue.calls == [("etl.commit_run", [run_id])]
    assert len(actions) == 1 and run_id in actions[0] and "committing" in actions[0]


# -- lost plans ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [RunState.QUEUED, RunState.PLANNING])
def test_a_run_stuck_before_running_gets_its_plan_sent_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue, state: RunState
) -> None:
    run_id = new_run(ledger)
    if state is RunState.PLANNING:
        assert ledger.move_run(run_id, RunState.PLANNING)

    assert run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S - 1)) == []
    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert enqueue.calls == [("etl.plan_run", [run_id])]
    assert len(actions) == 1 and run_id in actions[0] and state.value in actions[0]
    assert ledger.get_run(run_id).state is state


# -- deadline ------------------------------------------------------------------------------


def test_a_queued_run_has_no_deadline_it_is_sent_its_plan_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    # A queued run has not started: it may be waiting for a place (max_active_runs, a
    # backfill's limit). Its deadline counts from when it starts.
    run_id = new_run(ledger)
    created = ledger.get_run(run_id).created_at

    actions = run_reconcile(ledger, enqueue, created + timedelta(seconds=DEADLINE_S + 1))

    assert enqueue.calls == [("etl.plan_run", [run_id])]
    assert ledger.get_run(run_id).state is RunState.QUEUED
    assert actions == [f"sent plan for run {run_id}: queued with a free place"]


@pytest.mark.parametrize("state", [RunState.PLANNING])
def test_an_unplanned_run_past_its_deadline_is_failed_and_nothing_is_sent(
    ledger: FakeLedger, enqueue: RecordingEnqueue, state: RunState
) -> None:
    run_id = new_run(ledger)
    assert ledger.move_run(run_id, RunState.PLANNING)
    created = ledger.get_run(run_id).created_at

    actions = run_reconcile(ledger, enqueue, created + timedelta(seconds=DEADLINE_S + 1))

    assert enqueue.calls == []
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == f"deadline exceeded: still {state.value} after {DEADLINE_S} s"
    assert actions == [f"failed run {run_id}: {run.reason}"]


def test_a_running_run_past_its_deadline_is_failed_naming_how_many_chunks_are_unfinished(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=4, done=1)
    created = ledger.get_run(run_id).created_at

    actions = run_reconcile(ledger, enqueue, created + timedelta(seconds=DEADLINE_S + 1))

    assert enqueue.calls == []
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == (
        f"deadline exceeded: still running after {DEADLINE_S} s with 3 chunks unfinished"
    )
    assert len(actions) == 1 and run_id in actions[0]


def test_a_run_with_every_chunk_done_past_its_deadline_is_failed_not_committed(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=2, done=2)
    created = ledger.get_run(run_id).created_at

    run_reconcile(ledger, enqueue, created + timedelta(seconds=DEADLINE_S + 1))

    assert enqueue.calls == []
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason is not None and "deadline exceeded" in run.reason
    assert "with 0 chunks unfinished" in run.reason


def test_a_run_exactly_at_its_deadline_is_not_yet_failed(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=2, done=1)
    ledger.start_chunk(run_id, 1)  # still working on it
    created = ledger.get_run(run_id).created_at

    assert run_reconcile(ledger, enqueue, created + timedelta(seconds=DEADLINE_S)) == []

    assert ledger.get_run(run_id).state is RunState.RUNNING


def test_a_run_retried_long_after_it_was_created_is_not_failed_by_its_first_deadline(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=3, done=1)
    assert ledger.fail_run(run_id, "chunk 1 failed: boom")
    # The nightly run was created yesterday; an operator retries it this morning.
    yesterday = ledger.get_run(run_id).created_at - timedelta(days=1)
    ledger.runs[run_id] = dataclasses.replace(ledger.get_run(run_id), created_at=yesterday)
    RunService(ledger, enqueue).retry_run(run_id)

    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, 60))

    assert actions == []
    assert ledger.get_run(run_id).state is RunState.QUEUED  # its plan_run admits it


# -- runs that ended, and several runs at once ---------------------------------------------


def test_runs_that_ended_are_ignored_however_old(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    succeeded = running_run(ledger, chunks=1, done=1)
    assert ledger.move_run(succeeded, RunState.COMMITTING)
    assert ledger.move_run(succeeded, RunState.SUCCEEDED)
    failed = running_run(ledger, chunks=2, done=2)
    assert ledger.fail_run(failed, "commit refused")
    cancelled = new_run(ledger, day=2)
    assert ledger.move_run(cancelled, RunState.CANCELLED, reason="cancelled by request")
    before = [ledger.get_run(run_id) for run_id in (succeeded, failed, cancelled)]
    far_future = ledger.last_activity(cancelled) + timedelta(days=30)

    actions = run_reconcile(ledger, enqueue, far_future)

    assert (actions, enqueue.calls) == ([], [])
    assert [ledger.get_run(run_id) for run_id in (succeeded, failed, cancelled)] == before


def test_each_unfinished_run_gets_what_it_needs_in_one_pass(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    queued = new_run(ledger, day=3)
    all_done = running_run(ledger, chunks=2, done=2)
    working = running_run(ledger, chunks=2, done=1)
    ledger.start_chunk(working, 1)
    latest = max(ledger.last_activity(r) for r in (queued, all_done, working))

    actions = run_reconcile(ledger, enqueue, latest + timedelta(seconds=STALE_S + 1))

    assert enqueue.calls == [("etl.commit_run", [all_done]), ("etl.plan_run", [queued])]
    assert len(actions) == 2
    assert ledger.get_run(working).state is RunState.RUNNING


def test_a_run_committing_past_its_deadline_gets_its_commit_again_not_a_failure(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    # Its commit may be writing _SUCCESS right now: failing it could leave a failed run
    # with a committed output.
    run_id = running_run(ledger, chunks=2, done=2)
    assert ledger.move_run(run_id, RunState.COMMITTING)
    late = ledger.get_run(run_id).created_at + timedelta(seconds=DEADLINE_S + 1)

    actions = run_reconcile(ledger, enqueue, late)

    assert enqueue.calls == [("etl.commit_run", [run_id])]
    assert actions == [f"sent commit for run {run_id}: stuck committing"]
    assert ledger.get_run(run_id).state is RunState.COMMITTING


# -- lost chunk messages -------------------------------------------------------------------


def test_a_stale_run_with_pending_chunks_and_none_running_gets_its_plan_sent_again(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=4, done=1)

    assert run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S - 1)) == []
    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert enqueue.calls == [("etl.plan_run", [run_id])]
    assert actions == [f"sent plan for run {run_id}: 3 chunks pending and none running"]


def test_a_run_with_a_chunk_in_progress_is_left_alone(
    ledger: FakeLedger, enqueue: RecordingEnqueue
) -> None:
    run_id = running_run(ledger, chunks=4, done=1)
    ledger.start_chunk(run_id, 1)  # a long chunk: the others may wait behind it

    actions = run_reconcile(ledger, enqueue, idle_for(ledger, run_id, STALE_S + 1))

    assert (actions, enqueue.calls) == ([], [])
