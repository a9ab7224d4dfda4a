"""The ledger on the real PostgreSQL: uniqueness and plans hold under concurrency."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from etl.adapters.db import make_engine
from etl.adapters.ledger import SCHEMA_VERSION, upgrade
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.chunks import ChunkRange
from etl.domain.errors import IdempotencyConflict
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.domain.windows import RunWindow
from etl.formats.encoding import PartStats

from builders import dense_plan, new_run, planned_run, utc_day
from support import scratch_ledger

pytestmark = pytest.mark.integration

WINDOW = RunWindow(key_column="id", key_min=1, key_max=2000)
STATS = PartStats(rows=98, bytes=2048, sha256="a" * 64)


def running_run(services: Services) -> str:
    """A run planned in three chunks and running, of a pipeline of its own."""
    return planned_run(services.ledger, pipeline=f"p_{uuid.uuid4().hex[:8]}", day=date(2032, 1, 1))


def test_concurrent_scheduled_dispatches_create_exactly_one_run(services: Services) -> None:
    logical_date = date(2031, 1, int(uuid.uuid4().int % 28) + 1)
    pipeline = f"p_{uuid.uuid4().hex[:8]}"

    def dispatch(_: int) -> tuple[str, bool]:
        run, created = services.ledger.create_run(
            pipeline=pipeline,
            interval=utc_day(logical_date),
            logical_date=logical_date,
            trigger=Trigger.SCHEDULE,
            params={},
        )
        return run.id, created

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(dispatch, range(16)))
    assert sum(created for _, created in outcomes) == 1
    assert len({run_id for run_id, _ in outcomes}) == 1
    assert len(services.ledger.list_runs(pipeline=pipeline)) == 1


def test_idempotency_key_returns_the_same_run_and_refuses_a_different_request(
    services: Services,
) -> None:
    key = f"key-{uuid.uuid4()}"

    def request(day: date) -> tuple[Run, bool]:
        return services.ledger.create_run(
            pipeline="orders_daily",
            interval=utc_day(day),
            logical_date=day,
            trigger=Trigger.MANUAL,
            params={},
            idempotency_key=key,
            interval_name=day.isoformat(),
        )

    first, created = request(date(2026, 1, 1))
    again, created_again = request(date(2026, 1, 1))
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict, match=key):
        request(date(2026, 1, 2))


def test_two_planners_record_one_plan(services: Services) -> None:
    run_id = new_run(services.ledger, day=date(2026, 2, 1))
    plans = [dense_plan(1, 1000, 100), dense_plan(1, 2000, 300)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        recorded = list(
            pool.map(lambda plan: services.ledger.record_plan(run_id, plan, WINDOW), plans)
        )
    assert recorded[0] == recorded[1]
    assert len(services.ledger.get_chunks(run_id)) in {10, 7}
    assert services.ledger.get_run(run_id).chunk_count == len(recorded[0])


def test_a_chunk_start_returns_its_run_as_a_read_of_it_does_on_postgres(
    services: Services,
) -> None:
    """One statement starts the chunk and returns the run's row with it (UPDATE ... FROM),
    every column as get_run reads it."""
    ledger = services.ledger
    run_id = running_run(services)
    started = ledger.start_chunk(run_id, 0, "celery@a (pid 10)")

    assert started.run == ledger.get_run(run_id)
    assert started.run.window is not None and started.run.chunk_count is not None
    assert started.chunk == ledger.get_chunk(run_id, 0)
    assert started.chunk.attempts == 1 and started.chunk.worker == "celery@a (pid 10)"


@pytest.mark.parametrize("state", [RunState.FAILED, RunState.CANCELLED])
def test_a_chunk_of_an_ended_run_neither_starts_nor_finishes_on_postgres(
    services: Services, state: RunState
) -> None:
    ledger = services.ledger
    run_id = running_run(services)
    assert ledger.start_chunk(run_id, 0).chunk is not None
    assert ledger.move_run(run_id, state, reason="ended by the test")

    assert ledger.start_chunk(run_id, 1).chunk is None
    assert ledger.get_chunk(run_id, 1).attempts == 0
    assert not ledger.finish_chunk(
        run_id, 0, s3_key="k", stats=STATS, rejected_by_reason={}
    ).recorded
    assert ledger.get_chunk(run_id, 0).state is ChunkState.RUNNING


def test_a_chunk_start_waits_for_a_failing_run_and_then_does_not_start(
    services: Services,
) -> None:
    """The run's state is read under a share lock in the chunk's own UPDATE: a fail not
    yet committed makes the start wait, and the start then sees the run failed (a plain
    read would have seen it running and started the chunk)."""
    from support import wait_until

    ledger = services.ledger
    run_id = running_run(services)
    engine = services.ledger.engine
    with engine.connect() as failing:
        failing.execute(text("UPDATE etl_runs SET state = 'failed' WHERE id = :id"), {"id": run_id})
        with ThreadPoolExecutor(max_workers=1) as pool:
            started = pool.submit(ledger.start_chunk, run_id, 1)
            wait_until(
                lambda: _waits_for_a_lock(engine, "UPDATE etl_chunks"),
                timeout_s=10,
                what="the chunk start to wait for the run's row",
            )
            assert not started.done()
            failing.commit()
            assert started.result(timeout=10).chunk is None
    assert ledger.get_chunk(run_id, 1).attempts == 0


def _waits_for_a_lock(engine: Engine, query_start: str) -> bool:
    with engine.connect() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE :start"
            ),
            {"start": query_start + "%"},
        ).scalar_one()
    return bool(waiting)


def test_of_the_last_chunks_finishing_at_once_exactly_one_claims_the_commit(
    services: Services,
) -> None:
    # Each finisher commits its chunk, then asks: whatever the interleaving, exactly one
    # finish sees every chunk done, and the row lock lets one claim through.
    ledger = services.ledger
    for attempt in range(10):
        run_id = planned_run(
            ledger, chunks=8, pipeline=f"p_{uuid.uuid4().hex[:8]}", day=date(2033, 1, attempt + 1)
        )
        for index in range(8):
            assert ledger.start_chunk(run_id, index).chunk is not None
        barrier = threading.Barrier(8)

        def finish_and_claim(
            index: int, run_id: str = run_id, barrier: threading.Barrier = barrier
        ) -> tuple[bool, bool]:
            """Whether the finish saw the run complete, and whether a claim right after
            it won (a chunk task claims only after a completing finish)."""
            barrier.wait()
            key = f"k/part-{index:05d}"
            stats, none = STATS, {}
            finish = ledger.finish_chunk(
                run_id, index, s3_key=key, stats=stats, rejected_by_reason=none
            )
            assert finish.recorded
            return finish.completes_run, ledger.claim_commit(run_id)

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(finish_and_claim, range(8)))

        completing = [completes for completes, _ in outcomes]
        claims = [claimed for _, claimed in outcomes]
        # Exactly one finish saw the run complete (the finishes take turns on the run's
        # row: none can miss another's), and however the claims interleave, one won.
        assert completing.count(True) == 1, outcomes
        assert claims.count(True) == 1, outcomes
        assert ledger.get_run(run_id).state is RunState.COMMITTING


def test_state_moves_forward_only_on_postgres(services: Services) -> None:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 3, 1)),
        logical_date=date(2026, 3, 1),
        trigger=Trigger.MANUAL,
        params={},
    )
    assert services.ledger.move_run(run.id, RunState.PLANNING)
    assert not services.ledger.move_run(run.id, RunState.PLANNING)
    assert not services.ledger.move_run(run.id, RunState.SUCCEEDED)
    assert services.ledger.fail_run(run.id, "boom")
    assert not services.ledger.move_run(run.id, RunState.CANCELLED)
    assert services.ledger.get_run(run.id).state is RunState.FAILED


def test_concurrent_migrations_of_a_fresh_database_agree(postgres_url: str) -> None:
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    name = f"etl_migrate_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engines = [
        make_engine(make_url(postgres_url).set(database=name).render_as_string(False))
        for _ in range(4)
    ]
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            versions = list(pool.map(upgrade, engines))
        assert versions == [SCHEMA_VERSION] * 4
        tables = set(inspect(engines[0]).get_table_names())
        assert {"etl_runs", "etl_chunks", "etl_schema_version"} <= tables
        with engines[0].connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM etl_schema_version")).scalar() == 1
    finally:
        for engine in engines:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_etl_seed_creates_and_fills_the_orders_table(
    services: Services,
    service_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from etl.cli import main
    from etl.config import settings_env

    for name, value in settings_env(service_settings).items():
        monkeypatch.setenv(name, value)

    assert main(["seed", "--rows", "500"]) == 0

    assert "500" in capsys.readouterr().out
    with services.source_engine.connect() as conn:
        count, low, high = conn.execute(text("SELECT count(*), min(id), max(id) FROM orders")).one()
    assert (count, low, high) == (500, 1, 500)


def test_a_version_5_ledger_keeps_its_integer_chunks_after_the_migration(
    postgres_url: str,
) -> None:
    with scratch_ledger(postgres_url) as (engine, ledger):
        run_id = new_run(ledger)
        # Keys 1..150 as version 5 planned them: the last key_hi is key_max + 1, exclusive.
        ledger.record_plan(run_id, [ChunkRange(0, 1, 101), ChunkRange(1, 101, 151)], WINDOW)
        with engine.begin() as conn:  # back to version 5: integer bounds, no flag
            conn.execute(
                text(
                    "ALTER TABLE etl_chunks DROP COLUMN key_hi_inclusive, "
                    "ALTER COLUMN key_lo TYPE BIGINT USING key_lo::bigint, "
                    "ALTER COLUMN key_hi TYPE BIGINT USING key_hi::bigint"
                )
            )
            conn.execute(text("DELETE FROM etl_schema_version WHERE version > 5"))

        assert upgrade(engine) == SCHEMA_VERSION

        chunks = ledger.get_chunks(run_id)
        assert [(c.key_lo, c.key_hi, c.key_hi_inclusive) for c in chunks] == [
            (1, 101, False),
            (101, 151, False),
        ]
        types = {c["name"]: str(c["type"]) for c in inspect(engine).get_columns("etl_chunks")}
        assert (types["key_lo"], types["key_hi"], types["key_hi_inclusive"]) == (
            "TEXT",
            "TEXT",
            "BOOLEAN",
        )
        other = new_run(ledger)
        uuids = ("0b7e4b6c-7d1f-4e0a-9a53-3f1c0c5c0001", "f3a1c9d2-1b2c-4d5e-8f90-a1b2c3d4e5f6")
        ledger.record_plan(other, [ChunkRange(0, *uuids, key_hi_inclusive=True)], WINDOW)
        [chunk] = ledger.get_chunks(other)
        assert (chunk.key_lo, chunk.key_hi, chunk.key_hi_inclusive) == (*uuids, True)


def test_a_pooled_connection_is_reused_and_one_whose_backend_was_ended_is_replaced(
    services: Services,
) -> None:
    # The pool checks a connection at checkout without asking the server (no ping): its
    # socket has something to read only once the server has ended it.
    engine = make_engine(services.settings.database_url, pool_size=1)
    admin = make_engine(services.settings.database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == first

        with admin.connect() as conn:  # the pooled connection's backend is ended
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
            conn.execute(
                text(
                    "DO $$ BEGIN WHILE EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = "
                    f"{int(first)}) LOOP PERFORM pg_sleep(0.01); END LOOP; END $$"
                )
            )
        with engine.connect() as conn:  # a new connection, and no error
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first
    finally:
        engine.dispose()
        admin.dispose()
