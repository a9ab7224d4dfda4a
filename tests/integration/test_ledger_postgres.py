"""The ledger on the real PostgreSQL: uniqueness and plans hold under concurrency."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from etl.adapters.db import make_engine
from etl.adapters.ledger import SCHEMA_VERSION, IdempotencyConflict, upgrade
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.chunks import plan_chunks
from etl.domain.runs import RunState, Trigger

pytestmark = pytest.mark.integration


def test_concurrent_scheduled_dispatches_create_exactly_one_run(services: Services) -> None:
    logical_date = date(2031, 1, int(uuid.uuid4().int % 28) + 1)
    pipeline = f"p_{uuid.uuid4().hex[:8]}"

    def dispatch(_: int) -> tuple[str, bool]:
        run, created = services.ledger.create_run(
            pipeline=pipeline, logical_date=logical_date, trigger=Trigger.SCHEDULE, params={}
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
    first, created = services.ledger.create_run(
        pipeline="orders_daily",
        logical_date=date(2026, 1, 1),
        trigger=Trigger.MANUAL,
        params={},
        idempotency_key=key,
    )
    again, created_again = services.ledger.create_run(
        pipeline="orders_daily",
        logical_date=date(2026, 1, 1),
        trigger=Trigger.MANUAL,
        params={},
        idempotency_key=key,
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict, match=key):
        services.ledger.create_run(
            pipeline="orders_daily",
            logical_date=date(2026, 1, 2),
            trigger=Trigger.MANUAL,
            params={},
            idempotency_key=key,
        )


def test_two_planners_record_one_plan(services: Services) -> None:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily", logical_date=date(2026, 2, 1), trigger=Trigger.MANUAL, params={}
    )
    plans = [plan_chunks(1, 1000, 100), plan_chunks(1, 2000, 300)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        recorded = list(pool.map(lambda plan: services.ledger.record_plan(run.id, plan, {}), plans))
    assert recorded[0] == recorded[1]
    assert len(services.ledger.get_chunks(run.id)) in {10, 7}
    assert services.ledger.get_run(run.id).chunk_count == len(recorded[0])


def test_state_moves_forward_only_on_postgres(services: Services) -> None:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily", logical_date=date(2026, 3, 1), trigger=Trigger.MANUAL, params={}
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
