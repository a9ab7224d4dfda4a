from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from etl.adapters.ledger import SCHEMA_VERSION, Ledger, upgrade
from etl.bootstrap import Services
from etl.domain.chunks import ChunkRange
from etl.domain.errors import IdempotencyConflict, RunNotFound
from etl.domain.runs import ChunkFinish, ChunkState, RunState, Trigger
from etl.domain.windows import RunWindow
from etl.formats.encoding import PartStats

from builders import (
    DAY,
    dense_plan,
    finish_chunk,
    new_run,
    planned_run,
    run_in_state,
    utc_day,
    with_orders,
)

STATS = PartStats(rows=98, bytes=2048, sha256="a" * 64)


def window(key_min: int | None, key_max: int | None) -> RunWindow:
    return RunWindow(key_column="id", key_min=key_min, key_max=key_max)


def test_upgrade_twice_is_harmless_and_reports_the_schema_version(sqlite_engine: Engine) -> None:
    assert upgrade(sqlite_engine) == SCHEMA_VERSION
    assert upgrade(sqlite_engine) == SCHEMA_VERSION


def test_a_version_3_ledger_is_migrated_to_keep_part_etags(sqlite_engine: Engine) -> None:
    from sqlalchemy import delete, inspect, text

    from etl.adapters.ledger.schema import schema_version_table

    with sqlite_engine.begin() as conn:  # back to what version 3 created
        conn.execute(text("ALTER TABLE etl_chunks DROP COLUMN etag"))
        conn.execute(delete(schema_version_table).where(schema_version_table.c.version > 3))

    assert upgrade(sqlite_engine) == SCHEMA_VERSION

    columns = {column["name"] for column in inspect(sqlite_engine).get_columns("etl_chunks")}
    assert "etag" in columns


def test_a_new_run_is_queued_with_what_was_asked(ledger: Ledger) -> None:
    run, created = ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(DAY),
        logical_date=DAY,
        trigger=Trigger.MANUAL,
        params={"chunk_size": 10},
    )
    assert created
    stored = ledger.get_run(run.id)
    assert stored == run
    assert stored.state is RunState.QUEUED
    assert stored.params == {"chunk_size": 10}
    assert stored.logical_date == DAY
    assert stored.created_at.tzinfo is not None
    assert stored.chunk_count is None and stored.started_at is None


def test_a_scheduled_run_is_unique_per_pipeline_and_date(ledger: Ledger) -> None:
    first, first_created = ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(DAY),
        logical_date=DAY,
        trigger=Trigger.SCHEDULE,
        params={},
    )
    second, second_created = ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(DAY),
        logical_date=DAY,
        trigger=Trigger.SCHEDULE,
        params={},
    )
    assert first_created and not second_created
    assert second.id == first.id
    assert len(ledger.list_runs()) == 1


def test_scheduled_runs_of_other_dates_or_pipelines_are_separate(ledger: Ledger) -> None:
    ids = {
        new_run(ledger, trigger=Trigger.SCHEDULE),
        new_run(ledger, trigger=Trigger.SCHEDULE, day=date(2026, 11, 2)),
        new_run(ledger, trigger=Trigger.SCHEDULE, pipeline="other_pipeline"),
    }
    assert len(ids) == 3


def test_a_manual_run_without_a_key_is_always_new(ledger: Ledger) -> None:
    scheduled = new_run(ledger, trigger=Trigger.SCHEDULE)
    first = new_run(ledger)
    second = new_run(ledger)
    assert len({scheduled, first, second}) == 3


def test_the_same_idempotency_key_and_request_finds_the_same_run(ledger: Ledger) -> None:
    request = {
        "pipeline": "orders_daily",
        "interval": utc_day(DAY),
        "logical_date": DAY,
        "interval_name": DAY.isoformat(),
        "trigger": Trigger.MANUAL,
        "params": {"chunk_size": 500},
        "idempotency_key": "req-1",
    }
    first, first_created = ledger.create_run(**request)  # type: ignore[arg-type]
    again, again_created = ledger.create_run(**request)  # type: ignore[arg-type]
    assert (first_created, again_created) == (True, False)
    assert again.id == first.id
    assert len(ledger.list_runs()) == 1


@pytest.mark.parametrize(
    "different",
    [{"params": {"chunk_size": 501}}, {"day": date(2026, 11, 2)}, {"pipeline": "other"}],
)
def test_the_same_idempotency_key_for_a_different_request_conflicts(
    ledger: Ledger, different: dict[str, object]
) -> None:
    run_id = new_run(ledger, params={"chunk_size": 500}, idempotency_key="req-1")
    with pytest.raises(IdempotencyConflict, match="req-1") as caught:
        new_run(ledger, **{"params": {"chunk_size": 500}, "idempotency_key": "req-1", **different})  # type: ignore[arg-type]
    assert run_id in str(caught.value)
    assert [run.id for run in ledger.list_runs()] == [run_id]


def test_a_run_moves_forward_through_its_states(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    for state in (RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING, RunState.SUCCEEDED):
        assert ledger.move_run(run_id, state), state
        assert ledger.get_run(run_id).state is state
    run = ledger.get_run(run_id)
    assert run.started_at is not None and run.finished_at is not None
    assert run.is_terminal


def test_a_move_already_made_does_not_happen_twice(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert ledger.move_run(run_id, RunState.PLANNING)
    assert not ledger.move_run(run_id, RunState.PLANNING)


def test_a_run_never_moves_back_to_queued(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    ledger.move_run(run_id, RunState.PLANNING)
    assert not ledger.move_run(run_id, RunState.QUEUED)
    assert ledger.get_run(run_id).state is RunState.PLANNING


def test_a_run_cannot_skip_states(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert not ledger.move_run(run_id, RunState.RUNNING)
    assert not ledger.move_run(run_id, RunState.SUCCEEDED)
    assert ledger.get_run(run_id).state is RunState.QUEUED


def test_a_succeeded_run_cannot_be_failed(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    for state in (RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING, RunState.SUCCEEDED):
        ledger.move_run(run_id, state)
    assert not ledger.fail_run(run_id, "too late")
    run = ledger.get_run(run_id)
    assert run.state is RunState.SUCCEEDED
    assert run.reason is None


def test_a_failed_run_cannot_be_cancelled_and_keeps_its_reason(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert ledger.fail_run(run_id, "broker refused")
    assert not ledger.move_run(run_id, RunState.CANCELLED)
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == "broker refused"


def test_a_committing_run_cannot_be_cancelled(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.move_run(run_id, RunState.COMMITTING)
    assert not ledger.move_run(run_id, RunState.CANCELLED)


def test_record_plan_stores_pending_chunks_and_the_window(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    planned = [ChunkRange(0, 1, 101), ChunkRange(1, 101, 151)]
    chunks = ledger.record_plan(run_id, planned, window(1, 150))
    assert [(c.index, c.key_lo, c.key_hi, c.state, c.attempts) for c in chunks] == [
        (0, 1, 101, ChunkState.PENDING, 0),
        (1, 101, 151, ChunkState.PENDING, 0),
    ]
    run = ledger.get_run(run_id)
    assert run.chunk_count == 2
    assert run.window == window(1, 150)


def test_record_plan_keeps_text_bounds_and_the_last_chunks_closed_end(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    planned = [ChunkRange(0, "alpha", "m-5"), ChunkRange(1, "m-5", "zulu", key_hi_inclusive=True)]
    text_window = RunWindow(key_column="code", key_min="alpha", key_max="zulu")

    chunks = ledger.record_plan(run_id, planned, text_window)

    assert [(c.key_lo, c.key_hi, c.key_hi_inclusive) for c in ledger.get_chunks(run_id)] == [
        ("alpha", "m-5", False),
        ("m-5", "zulu", True),
    ]
    assert chunks == ledger.get_chunks(run_id)
    assert ledger.get_run(run_id).window == text_window
    # A text bound that looks like a number stays text; an int stays an int.
    other = new_run(ledger)
    ledger.record_plan(other, [ChunkRange(0, "5", "7"), ChunkRange(1, 7, 9, True)], text_window)
    assert [(c.key_lo, c.key_hi) for c in ledger.get_chunks(other)] == [("5", "7"), (7, 9)]


def test_record_plan_twice_keeps_the_first_plan(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    first = ledger.record_plan(run_id, dense_plan(1, 300, 100), window(1, 300))
    second = ledger.record_plan(run_id, dense_plan(1, 1000, 50), window(1, 1000))
    assert second == first
    assert ledger.get_chunks(run_id) == first
    assert ledger.get_run(run_id).chunk_count == 3
    assert ledger.get_run(run_id).window == window(1, 300)


def test_an_empty_plan_is_recorded_once_as_zero_chunks(ledger: Ledger) -> None:
    run_id = new_run(ledger)
    assert ledger.record_plan(run_id, [], window(None, None)) == []
    assert ledger.record_plan(run_id, dense_plan(1, 10, 5), window(1, 10)) == []
    assert ledger.get_run(run_id).chunk_count == 0


def test_starting_a_chunk_counts_an_attempt_and_returns_the_run(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    first = ledger.start_chunk(run_id, 1)
    assert first.chunk is not None and first.chunk.attempts == 1
    assert first.run == ledger.get_run(run_id)
    chunk = ledger.start_chunk(run_id, 1).chunk
    assert chunk is not None
    assert chunk.attempts == 2
    assert chunk.state is ChunkState.RUNNING


def test_a_chunk_keeps_the_worker_of_its_last_attempt(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    assert ledger.start_chunk(run_id, 1, "celery@a (pid 10)").chunk.worker == "celery@a (pid 10)"
    ledger.start_chunk(run_id, 1, "celery@b (pid 20)")
    assert ledger.get_chunk(run_id, 1).worker == "celery@b (pid 20)"
    assert ledger.get_chunk(run_id, 0).worker is None  # not started: no worker yet


def test_finish_chunk_records_the_part_once(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.start_chunk(run_id, 0)
    assert ledger.finish_chunk(
        run_id, 0, s3_key="k/part-00000", stats=STATS, rejected_by_reason={"invalid_email": 2}
    ).recorded
    other = PartStats(rows=1, bytes=1, sha256="b" * 64)
    assert not ledger.finish_chunk(
        run_id, 0, s3_key="k/elsewhere", stats=other, rejected_by_reason={}
    ).recorded
    chunk = ledger.get_chunk(run_id, 0)
    assert chunk.state is ChunkState.DONE
    assert (chunk.s3_key, chunk.rows, chunk.bytes, chunk.sha256) == (
        "k/part-00000",
        98,
        2048,
        "a" * 64,
    )
    assert chunk.rejected_by_reason == {"invalid_email": 2}
    assert chunk.rows_rejected == 2


def test_a_done_chunk_is_not_restarted(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.start_chunk(run_id, 0)
    ledger.finish_chunk(run_id, 0, s3_key="k", stats=STATS, rejected_by_reason={})
    chunk = ledger.start_chunk(run_id, 0).chunk
    assert chunk.state is ChunkState.DONE
    assert chunk.attempts == 1


def end_run(ledger: Ledger, run_id: str, state: RunState) -> None:
    """Fail or cancel a run, as the lifecycle would."""
    assert ledger.move_run(run_id, state, reason=f"{state} by the test")


@pytest.mark.parametrize("state", [RunState.FAILED, RunState.CANCELLED])
def test_a_chunk_of_an_ended_run_does_not_start(ledger: Ledger, state: RunState) -> None:
    run_id = planned_run(ledger)
    end_run(ledger, run_id, state)

    assert ledger.start_chunk(run_id, 1).chunk is None
    chunk = ledger.get_chunk(run_id, 1)
    assert (chunk.state, chunk.attempts, chunk.started_at) == (ChunkState.PENDING, 0, None)


def test_a_chunk_of_a_run_queued_again_for_a_retry_does_not_start(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    end_run(ledger, run_id, RunState.FAILED)
    assert ledger.reopen_run(run_id) is not None  # queued: it waits for admission again

    assert ledger.start_chunk(run_id, 0).chunk is None
    assert ledger.get_chunk(run_id, 0).attempts == 0


def test_a_done_chunk_of_an_ended_run_is_returned_as_it_is(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.start_chunk(run_id, 0)
    assert ledger.finish_chunk(run_id, 0, s3_key="k", stats=STATS, rejected_by_reason={}).recorded
    end_run(ledger, run_id, RunState.FAILED)

    chunk = ledger.start_chunk(run_id, 0).chunk
    assert chunk is not None
    assert (chunk.state, chunk.attempts, chunk.s3_key) == (ChunkState.DONE, 1, "k")


@pytest.mark.parametrize("state", [RunState.FAILED, RunState.CANCELLED])
def test_a_chunk_finishing_after_its_run_ended_is_not_recorded(
    ledger: Ledger, state: RunState
) -> None:
    run_id = planned_run(ledger)
    assert ledger.start_chunk(run_id, 2).chunk is not None
    end_run(ledger, run_id, state)

    assert not ledger.finish_chunk(
        run_id, 2, s3_key="k", stats=STATS, rejected_by_reason={}
    ).recorded
    chunk = ledger.get_chunk(run_id, 2)
    assert chunk.state is ChunkState.RUNNING
    assert chunk.s3_key is None and chunk.rows is None
    assert ledger.chunk_counts(run_id)[ChunkState.DONE] == 0
    # The worker then releases it: pending again, so no chunk of an ended run is running.
    assert ledger.release_chunk(run_id, 2, "the run ended")
    assert ledger.get_chunk(run_id, 2).state is ChunkState.PENDING
    assert not ledger.release_chunk(run_id, 2, "the run ended")  # only a running chunk


def test_a_late_release_leaves_alone_a_chunk_a_retry_has_started_again(ledger: Ledger) -> None:
    # The run ended while chunk 2 was transformed; it was retried and chunk 2 started
    # again before the first delivery released it: that release must not touch it.
    run_id = planned_run(ledger)
    assert ledger.start_chunk(run_id, 2).chunk is not None
    end_run(ledger, run_id, RunState.FAILED)
    assert ledger.reopen_run(run_id) is not None
    assert ledger.move_run(run_id, RunState.PLANNING)
    assert ledger.move_run(run_id, RunState.RUNNING)
    assert ledger.start_chunk(run_id, 2).chunk is not None

    assert not ledger.release_chunk(run_id, 2, "the run ended")
    assert ledger.get_chunk(run_id, 2).state is ChunkState.RUNNING


def test_a_chunk_of_a_committing_run_neither_starts_nor_finishes(ledger: Ledger) -> None:
    # The commit has checked the chunks: nothing may change under it.
    run_id = planned_run(ledger, chunks=2)
    assert ledger.start_chunk(run_id, 0).chunk is not None
    assert ledger.move_run(run_id, RunState.COMMITTING)

    assert ledger.start_chunk(run_id, 1).chunk is None
    assert not ledger.finish_chunk(
        run_id, 0, s3_key="k", stats=STATS, rejected_by_reason={}
    ).recorded


def test_the_commit_is_claimed_once_and_only_when_every_chunk_is_done(ledger: Ledger) -> None:
    run_id = planned_run(ledger, chunks=3, done=1)
    finish_chunk(ledger, run_id, 2)  # the last chunk first: chunk 1 is still pending

    assert not ledger.claim_commit(run_id)
    assert ledger.get_run(run_id).state is RunState.RUNNING
    finish_chunk(ledger, run_id, 1)
    assert ledger.claim_commit(run_id)
    assert not ledger.claim_commit(run_id)
    assert ledger.get_run(run_id).state is RunState.COMMITTING


def test_only_the_finish_that_leaves_no_chunk_undone_says_it_completes_the_run(
    ledger: Ledger,
) -> None:
    run_id = planned_run(ledger, chunks=3)
    for index in range(3):
        assert ledger.start_chunk(run_id, index).chunk is not None

    def finish(index: int) -> ChunkFinish:
        return ledger.finish_chunk(
            run_id, index, s3_key=f"k/part-{index:05d}", stats=STATS, rejected_by_reason={}
        )

    assert finish(2) == ChunkFinish(recorded=True, completes_run=False)
    assert finish(0) == ChunkFinish(recorded=True, completes_run=False)
    assert finish(1) == ChunkFinish(recorded=True, completes_run=True)
    # A second delivery of a chunk records nothing, so it completes nothing either.
    assert finish(1) == ChunkFinish(recorded=False, completes_run=False)


def test_a_run_of_no_chunks_is_claimed_and_an_unplanned_or_ended_one_is_not(
    ledger: Ledger,
) -> None:
    empty = planned_run(ledger, chunks=0)
    assert ledger.claim_commit(empty)
    planning = run_in_state(ledger, RunState.PLANNING)
    assert not ledger.claim_commit(planning)
    cancelled = planned_run(ledger, chunks=2, done=2)
    assert ledger.move_run(cancelled, RunState.CANCELLED)
    assert not ledger.claim_commit(cancelled)
    assert ledger.get_run(cancelled).state is RunState.CANCELLED


def test_a_chunk_invalidated_by_the_commit_is_not_done_for_the_next_claim(ledger: Ledger) -> None:
    run_id = planned_run(ledger, chunks=2, done=2)
    assert ledger.invalidate_chunk(run_id, 0, "part of chunk 0 is missing")
    assert ledger.move_run(run_id, RunState.FAILED)
    assert ledger.reopen_run(run_id) is not None
    assert ledger.move_run(run_id, RunState.PLANNING)
    assert ledger.move_run(run_id, RunState.RUNNING)

    assert not ledger.claim_commit(run_id)
    finish_chunk(ledger, run_id, 0)
    assert ledger.claim_commit(run_id)


def test_advisory_lock_ids_are_distinct() -> None:
    from etl.adapters.ledger.locks import ALL_LOCK_IDS

    assert len(set(ALL_LOCK_IDS)) == len(ALL_LOCK_IDS)


def test_fail_chunk_does_not_undo_a_done_chunk(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.finish_chunk(run_id, 2, s3_key="k", stats=STATS, rejected_by_reason={})
    ledger.fail_chunk(run_id, 2, "late failure from a duplicate delivery")
    chunk = ledger.get_chunk(run_id, 2)
    assert chunk.state is ChunkState.DONE
    assert chunk.error is None


def test_fail_chunk_records_the_error_on_an_unfinished_chunk(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    ledger.start_chunk(run_id, 1)
    ledger.fail_chunk(run_id, 1, "ValueError: poison")
    chunk = ledger.get_chunk(run_id, 1)
    assert chunk.state is ChunkState.FAILED
    assert chunk.error == "ValueError: poison"


def test_chunk_counts_count_every_state(ledger: Ledger) -> None:
    run_id = planned_run(ledger, chunks=5)
    ledger.start_chunk(run_id, 0)
    ledger.finish_chunk(run_id, 1, s3_key="k1", stats=STATS, rejected_by_reason={})
    ledger.finish_chunk(run_id, 2, s3_key="k2", stats=STATS, rejected_by_reason={})
    ledger.fail_chunk(run_id, 3, "boom")
    assert ledger.chunk_counts(run_id) == {
        ChunkState.PENDING: 1,
        ChunkState.RUNNING: 1,
        ChunkState.DONE: 2,
        ChunkState.FAILED: 1,
    }


def test_chunk_counts_of_an_unplanned_run_are_all_zero(ledger: Ledger) -> None:
    assert set(ledger.chunk_counts(new_run(ledger)).values()) == {0}


def test_get_chunk_of_an_unknown_index_raises_lookup_error(ledger: Ledger) -> None:
    run_id = planned_run(ledger)
    with pytest.raises(LookupError, match="no chunk 7"):
        ledger.get_chunk(run_id, 7)


def test_list_runs_is_newest_first_and_filters(ledger: Ledger) -> None:
    oldest = new_run(ledger)
    other = new_run(ledger, pipeline="other_pipeline")
    newest = new_run(ledger)
    ledger.move_run(newest, RunState.PLANNING)

    assert [run.id for run in ledger.list_runs()] == [newest, other, oldest]
    assert [run.id for run in ledger.list_runs(pipeline="orders_daily")] == [newest, oldest]
    assert [run.id for run in ledger.list_runs(state=RunState.PLANNING)] == [newest]
    assert [
        run.id for run in ledger.list_runs(pipeline="other_pipeline", state=RunState.QUEUED)
    ] == [other]
    assert [run.id for run in ledger.list_runs(limit=2)] == [newest, other]
    assert ledger.list_runs(pipeline="nothing") == []


def test_get_run_of_an_unknown_id_raises_run_not_found(ledger: Ledger) -> None:
    with pytest.raises(RunNotFound, match="no run with id 'no-such-run'"):
        ledger.get_run("no-such-run")


def test_moving_an_unknown_run_moves_nothing(ledger: Ledger) -> None:
    assert not ledger.move_run("no-such-run", RunState.PLANNING)
    assert not ledger.fail_run("no-such-run", "why")


def test_a_version_1_ledger_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    from sqlalchemy import insert, inspect

    from etl.adapters.db import make_engine
    from etl.adapters.ledger.schema import chunks_table, runs_table, schema_version_table

    engine = make_engine("sqlite:///" + str(tmp_path / "v1.db"))
    with engine.begin() as conn:  # the ledger as version 1 created it
        for table in (runs_table, chunks_table, schema_version_table):
            table.create(conn)
        conn.execute(insert(schema_version_table).values(version=1, applied_at=datetime.now(UTC)))
    assert "etl_dead_letters" not in inspect(engine).get_table_names()

    assert upgrade(engine) == SCHEMA_VERSION
    assert {"etl_dead_letters", "etl_watermarks", "etl_backfills", "etl_schedule_state"} <= set(
        inspect(engine).get_table_names()
    )
    assert "backfill_id" in {c["name"] for c in inspect(engine).get_columns("etl_runs")}
    with engine.connect() as conn:
        versions = sorted(conn.execute(schema_version_table.select()).scalars())
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    engine.dispose()


# The chunks table as versions 1 to 5 made it: integer bounds, the last one exclusive.
CHUNKS_V5 = """CREATE TABLE etl_chunks (
    run_id VARCHAR(36) NOT NULL REFERENCES etl_runs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, key_lo BIGINT NOT NULL, key_hi BIGINT NOT NULL,
    state VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, s3_key TEXT, rows BIGINT,
    bytes BIGINT, sha256 VARCHAR(64), rows_rejected BIGINT, rejected_by_reason JSON,
    error TEXT, started_at DATETIME, finished_at DATETIME, updated_at DATETIME NOT NULL,
    etag VARCHAR(100), PRIMARY KEY (run_id, idx))"""


def test_a_version_5_ledger_keeps_its_integer_chunks_after_the_migration(
    sqlite_engine: Engine, services: Services
) -> None:
    from sqlalchemy import delete, inspect, text

    from etl.adapters.db import SqlSource
    from etl.adapters.ledger.schema import schema_version_table
    from etl.pipelines.orders import ORDERS_DAILY

    ledger = Ledger(sqlite_engine)
    run_id = new_run(ledger)
    with sqlite_engine.begin() as conn:  # back to version 5, with a plan it recorded
        conn.execute(text("DROP TABLE etl_chunks"))
        conn.execute(text(CHUNKS_V5))
        conn.execute(
            text(
                "INSERT INTO etl_chunks (run_id, idx, key_lo, key_hi, state, attempts, "
                "updated_at) VALUES (:run, 0, 1, 101, 'pending', 0, '2026-01-01 00:00:00'), "
                "(:run, 1, 101, 151, 'pending', 0, '2026-01-01 00:00:00')"
            ),
            {"run": run_id},
        )  # keys 1..150: the last chunk's key_hi was key_max + 1, exclusive
        conn.execute(delete(schema_version_table).where(schema_version_table.c.version > 5))

    assert upgrade(sqlite_engine) == SCHEMA_VERSION

    chunks = ledger.get_chunks(run_id)
    assert [(c.key_lo, c.key_hi, c.key_hi_inclusive) for c in chunks] == [
        (1, 101, False),
        (101, 151, False),
    ]
    columns = {c["name"]: str(c["type"]) for c in inspect(sqlite_engine).get_columns("etl_chunks")}
    assert (columns["key_lo"], columns["key_hi"]) == ("TEXT", "TEXT")
    # The old last chunk still reads its keys 101..150, and not one more.
    with_orders(services, 200)
    source = SqlSource(sqlite_engine, ORDERS_DAILY.source)
    last = chunks[1]
    read = [
        row["id"]
        for batch in source.read_range(
            last.key_lo, last.key_hi, 100, key_hi_inclusive=last.key_hi_inclusive
        )
        for row in batch
    ]
    assert read == list(range(101, 151))
    # New plans record text bounds in the migrated table.
    other = new_run(ledger)
    ledger.record_plan(other, [ChunkRange(0, "a", "b", True)], window(None, None))
    assert [(c.key_lo, c.key_hi) for c in ledger.get_chunks(other)] == [("a", "b")]
