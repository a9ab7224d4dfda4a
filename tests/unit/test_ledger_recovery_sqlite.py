"""The ledger's recovery methods on SQLite: reopening failed runs, finding active runs and
their last activity, and the record of dead letters."""

from __future__ import annotations

from typing import Any

import pytest

from etl.adapters.ledger import Ledger
from etl.domain.dead_letters import DeadLetterState
from etl.domain.runs import ChunkState, RunState

from builders import finish_chunk, new_run, planned_run, run_in_state


def run_taken_to(ledger: Ledger, state: RunState) -> str:
    """A run taken along the pipeline's path to ``state``: from running on, planned in
    one chunk, done before it commits; failed or cancelled with a reason."""
    if state in {RunState.QUEUED, RunState.PLANNING}:
        return run_in_state(ledger, state)
    run_id = planned_run(ledger, chunks=1)
    if state is RunState.FAILED:
        assert ledger.fail_run(run_id, "chunk 0 failed: boom")
    elif state is RunState.CANCELLED:
        assert ledger.move_run(run_id, RunState.CANCELLED, reason="cancelled by request")
    elif state in {RunState.COMMITTING, RunState.SUCCEEDED}:
        finish_chunk(ledger, run_id, 0)
        assert ledger.move_run(run_id, RunState.COMMITTING)
        if state is RunState.SUCCEEDED:
            assert ledger.move_run(run_id, RunState.SUCCEEDED)
    return run_id


# -- reopen_run ----------------------------------------------------------------------------


def test_reopening_a_failed_run_that_was_never_planned_queues_it_again(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert ledger.fail_run(run_id, "could not enqueue the plan task: broker down")

    reopened = ledger.reopen_run(run_id)

    assert reopened is not None
    assert reopened == ledger.get_run(run_id)
    assert reopened.state is RunState.QUEUED
    assert reopened.chunk_count is None
    assert (reopened.reason, reopened.finished_at) == (None, None)


def test_reopening_a_failed_planned_run_queues_it_resetting_unfinished_chunks_keeping_done_ones(
    ledger: Ledger,
) -> None:
    run_id = planned_run(ledger, chunks=4)
    finish_chunk(ledger, run_id, 0)
    ledger.start_chunk(run_id, 1)
    ledger.fail_chunk(run_id, 1, "ValueError: bad row")
    ledger.start_chunk(run_id, 2)
    ledger.start_chunk(run_id, 2)  # left running by a worker that died, twice
    assert ledger.fail_run(run_id, "chunk 1 failed: ValueError: bad row")
    done_before = ledger.get_chunk(run_id, 0)

    reopened = ledger.reopen_run(run_id)

    assert reopened is not None
    # Queued, to wait for a place like any run (max_active_runs), with its plan kept.
    assert reopened.state is RunState.QUEUED
    assert (reopened.reason, reopened.started_at, reopened.finished_at) == (None, None, None)
    assert reopened.chunk_count == 4
    assert ledger.get_run(run_id).state is RunState.QUEUED
    chunks = ledger.get_chunks(run_id)
    assert chunks[0] == done_before
    assert [(c.index, c.state, c.attempts, c.error) for c in chunks[1:]] == [
        (1, ChunkState.PENDING, 0, None),
        (2, ChunkState.PENDING, 0, None),
        (3, ChunkState.PENDING, 0, None),
    ]


@pytest.mark.parametrize(
    "state",
    [state for state in RunState if state is not RunState.FAILED],
)
def test_a_run_that_is_not_failed_is_not_reopened_and_not_changed(
    ledger: Ledger, state: RunState
) -> None:
    run_id = run_taken_to(ledger, state)
    before = (ledger.get_run(run_id), ledger.get_chunks(run_id))

    assert ledger.reopen_run(run_id) is None

    assert (ledger.get_run(run_id), ledger.get_chunks(run_id)) == before
    assert before[0].state is state


def test_a_failed_run_is_reopened_only_once(ledger: Ledger) -> None:
    run_id = run_taken_to(ledger, RunState.FAILED)
    assert ledger.reopen_run(run_id) is not None
    assert ledger.reopen_run(run_id) is None
    assert ledger.get_run(run_id).state is RunState.QUEUED


# -- active_runs and last_activity ---------------------------------------------------------


def test_active_runs_are_the_unfinished_ones_oldest_first(ledger: Ledger) -> None:
    ids = {state: run_taken_to(ledger, state) for state in RunState}

    active = ledger.active_runs()

    assert [run.id for run in active] == [
        ids[RunState.QUEUED],
        ids[RunState.PLANNING],
        ids[RunState.RUNNING],
        ids[RunState.COMMITTING],
    ]
    assert [run.state for run in active] == [
        RunState.QUEUED,
        RunState.PLANNING,
        RunState.RUNNING,
        RunState.COMMITTING,
    ]


def test_active_runs_of_an_empty_ledger_are_none(ledger: Ledger) -> None:
    assert ledger.active_runs() == []


def test_the_last_activity_of_an_unplanned_run_is_its_last_update(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert ledger.move_run(run_id, RunState.PLANNING)
    run = ledger.get_run(run_id)

    last = ledger.last_activity(run_id)

    assert last == run.updated_at
    assert last.tzinfo is not None
    assert last > run.created_at


def test_the_last_activity_includes_a_chunk_changed_after_the_run(ledger: Ledger) -> None:
    run_id = planned_run(ledger, chunks=3)
    finish_chunk(ledger, run_id, 1)
    run, chunk = ledger.get_run(run_id), ledger.get_chunk(run_id, 1)
    assert chunk.finished_at is not None and chunk.finished_at > run.updated_at

    assert ledger.last_activity(run_id) == chunk.finished_at


def test_the_last_activity_is_the_run_when_it_changed_after_its_chunks(ledger: Ledger) -> None:
    run_id = planned_run(ledger, chunks=3)
    finish_chunk(ledger, run_id, 1)
    assert ledger.fail_run(run_id, "chunk 2 failed: boom")

    assert ledger.last_activity(run_id) == ledger.get_run(run_id).updated_at


# -- dead letters --------------------------------------------------------------------------


def letter(fingerprint: str = "task-1", **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "fingerprint": fingerprint,
        "queue": "etl.transform.dlq",
        "task": "etl.transform_chunk",
        "task_id": fingerprint,
        "run_id": "run-1",
        "chunk_index": 3,
        "reason": "chunk 3 failed: ValueError: bad row",
        "death_reason": "rejected",
        "death_count": 1,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"task": "etl.transform_chunk", "id": fingerprint},
        "body": b'[["run-1", 3], {}, {}]',
    }
    values.update(changes)
    return values


def test_a_new_dead_letter_is_recorded_dead_with_what_was_parked(ledger: Ledger) -> None:
    dead_letter_id, created = ledger.record_dead_letter(letter())

    assert created
    stored = ledger.get_dead_letter(dead_letter_id)
    assert stored.id == dead_letter_id
    assert stored.state is DeadLetterState.DEAD
    assert (stored.queue, stored.task, stored.task_id) == (
        "etl.transform.dlq",
        "etl.transform_chunk",
        "task-1",
    )
    assert (stored.run_id, stored.chunk_index) == ("run-1", 3)
    assert stored.reason == "chunk 3 failed: ValueError: bad row"
    assert (stored.death_reason, stored.death_count) == ("rejected", 1)
    assert stored.headers == {"task": "etl.transform_chunk", "id": "task-1"}
    assert stored.body == b'[["run-1", 3], {}, {}]'
    assert (stored.replay_count, stored.replayed_at) == (0, None)
    assert stored.first_seen_at == stored.last_seen_at
    assert stored.first_seen_at.tzinfo is not None


def test_the_same_message_seen_again_updates_its_record_instead_of_adding_one(
    ledger: Ledger,
) -> None:
    first_id, _ = ledger.record_dead_letter(letter(death_count=3))

    again_id, created = ledger.record_dead_letter(
        letter(death_count=2, reason="delivered too many times", death_reason="delivery_limit")
    )

    assert (again_id, created) == (first_id, False)
    stored = ledger.get_dead_letter(first_id)
    assert stored.death_count == 3  # the highest count seen, never lower
    assert (stored.reason, stored.death_reason) == ("delivered too many times", "delivery_limit")
    assert stored.last_seen_at > stored.first_seen_at
    assert len(ledger.list_dead_letters(state=None)) == 1

    ledger.record_dead_letter(letter(death_count=5))
    assert ledger.get_dead_letter(first_id).death_count == 5


def test_a_replayed_message_that_dies_again_is_dead_again_and_keeps_its_replay_count(
    ledger: Ledger,
) -> None:
    dead_letter_id, _ = ledger.record_dead_letter(letter())
    assert ledger.mark_dead_letter(dead_letter_id, DeadLetterState.REPLAYED, replayed=True)
    replayed_at = ledger.get_dead_letter(dead_letter_id).replayed_at

    again_id, created = ledger.record_dead_letter(letter(death_count=2))

    assert (again_id, created) == (dead_letter_id, False)
    stored = ledger.get_dead_letter(dead_letter_id)
    assert stored.state is DeadLetterState.DEAD
    assert (stored.replay_count, stored.replayed_at) == (1, replayed_at)
    assert [x.id for x in ledger.list_dead_letters()] == [dead_letter_id]


def test_dead_letters_are_listed_newest_first_only_dead_ones_by_default(ledger: Ledger) -> None:
    oldest, _ = ledger.record_dead_letter(letter("a", run_id="run-1"))
    purged, _ = ledger.record_dead_letter(letter("b", run_id="run-2"))
    newest, _ = ledger.record_dead_letter(letter("c", run_id="run-1"))
    assert ledger.mark_dead_letter(purged, DeadLetterState.PURGED)

    def ids(**filters: Any) -> list[int]:
        return [x.id for x in ledger.list_dead_letters(**filters)]

    assert ids() == [newest, oldest]
    assert ids(state=None) == [newest, purged, oldest]
    assert ids(state=DeadLetterState.PURGED) == [purged]
    assert ids(run_id="run-1") == [newest, oldest]
    assert ids(run_id="run-2") == []
    assert ids(state=None, run_id="run-2") == [purged]
    assert ids(state=None, limit=2) == [newest, purged]


def test_a_dead_letter_seen_again_is_listed_as_the_newest(ledger: Ledger) -> None:
    first, _ = ledger.record_dead_letter(letter("a"))
    second, _ = ledger.record_dead_letter(letter("b"))

    ledger.record_dead_letter(letter("a", death_count=2))

    assert [x.id for x in ledger.list_dead_letters()] == [first, second]


def test_an_unknown_dead_letter_is_a_lookup_error_naming_it(ledger: Ledger) -> None:
    with pytest.raises(LookupError, match="no dead letter with id 4242"):
        ledger.get_dead_letter(4242)


def test_a_dead_letter_is_marked_replayed_once(ledger: Ledger) -> None:
    dead_letter_id, _ = ledger.record_dead_letter(letter())

    assert ledger.mark_dead_letter(dead_letter_id, DeadLetterState.REPLAYED, replayed=True)
    replayed = ledger.get_dead_letter(dead_letter_id)
    assert not ledger.mark_dead_letter(dead_letter_id, DeadLetterState.REPLAYED, replayed=True)

    assert replayed.state is DeadLetterState.REPLAYED
    assert replayed.replay_count == 1
    assert replayed.replayed_at is not None and replayed.replayed_at >= replayed.last_seen_at
    assert ledger.get_dead_letter(dead_letter_id) == replayed
    assert ledger.list_dead_letters() == []


def test_a_purged_dead_letter_is_kept_for_the_record_and_never_replayed(ledger: Ledger) -> None:
    dead_letter_id, _ = ledger.record_dead_letter(letter())

    assert ledger.mark_dead_letter(dead_letter_id, DeadLetterState.PURGED)
    assert not ledger.mark_dead_letter(dead_letter_id, DeadLetterState.REPLAYED, replayed=True)

    stored = ledger.get_dead_letter(dead_letter_id)
    assert stored.state is DeadLetterState.PURGED
    assert (stored.replay_count, stored.replayed_at) == (0, None)
    assert ledger.list_dead_letters() == []
    assert [x.id for x in ledger.list_dead_letters(state=None)] == [dead_letter_id]


def test_marking_an_unknown_dead_letter_moves_nothing(ledger: Ledger) -> None:
    assert not ledger.mark_dead_letter(4242, DeadLetterState.PURGED)


def test_a_replay_the_broker_refuses_leaves_the_dead_letter_dead_for_the_next_try(
    ledger: Ledger,
) -> None:
    from etl.service.dead_letters import DeadLetterService
    from etl.service.lifecycle import RunService

    from fakes import RecordingEnqueue

    dead_letter_id, _ = ledger.record_dead_letter(letter(run_id=None))
    # Nothing listens on port 1: the send fails at once.
    runs = RunService(ledger, RecordingEnqueue())
    refusing = DeadLetterService(ledger, "amqp://guest:guest@127.0.0.1:1//", runs)

    with pytest.raises(OSError):
        refusing.replay(dead_letter_id)

    stored = ledger.get_dead_letter(dead_letter_id)
    assert (stored.state, stored.replay_count) == (DeadLetterState.DEAD, 0)
