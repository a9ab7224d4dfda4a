"""Runs on an in-process worker (Celery's pytest fixtures) over the real broker,
PostgreSQL, Redis and moto's S3 server."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from typing import Any

import pytest
import redis

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.domain.runs import ChunkState, RunState, Trigger
from etl.domain.transform import BatchResult
from etl.pipelines import PIPELINES
from etl.pipelines.orders import ORDERS_DAILY
from etl.service.execution import plan_run
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import (
    TASK_START_SCHEDULED_RUN,
    TASK_TRANSFORM_CHUNK,
    EtlCelery,
    celery_enqueue,
)

from builders import utc_day
from support import assert_run_output_matches_source, wait_until

pytestmark = pytest.mark.integration


def test_a_run_completes_with_every_row_once(
    celery_app: EtlCelery, worker: Any, services: Services
) -> None:
    seed_orders(services.source_engine, 3_000)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        "orders_daily", interval=date(2026, 11, 1), params={"chunk_size": 700}
    )
    final = wait_for_run(services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert final.chunk_count == 5
    manifest = assert_run_output_matches_source(services, final)
    assert [part["key"].rsplit("/", 1)[1] for part in manifest["parts"]] == [
        f"part-{i:05d}.jsonl.gz" for i in range(5)
    ]


def test_a_run_that_reads_nothing_is_committed_by_its_plan(
    celery_app: EtlCelery, worker: Any, services: Services
) -> None:
    # No chunk will ever finish it: plan_run claims the commit itself and sends it.
    seed_orders(services.source_engine, 0)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        "orders_daily", interval=date(2026, 11, 5)
    )
    final = wait_for_run(services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert (final.chunk_count, final.rows_written) == (0, 0)
    manifest = json.loads(services.parts.get_bytes(final.manifest_key or ""))
    assert manifest["parts"] == []


@pytest.mark.parametrize(
    ("rows", "chunk_size"), [(20_000, 1_000_000), (2_000, 100)], ids=["one big", "twenty small"]
)
def test_chunk_tasks_store_nothing_on_the_result_backend(
    celery_app: EtlCelery,
    worker: Any,
    services: Services,
    redis_url: str,
    rows: int,
    chunk_size: int,
) -> None:
    # The ledger is the truth: no chord counts the chunks, and nothing reads their results,
    # so none is stored (a part's key, counts and checksum are in the ledger).
    seed_orders(services.source_engine, rows)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        "orders_daily", interval=date(2026, 11, 2), params={"chunk_size": chunk_size}
    )
    final = wait_for_run(services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED and final.chunk_count == -(-rows // chunk_size)

    backend = redis.Redis.from_url(redis_url)
    stored = [
        key
        for key in backend.scan_iter("celery-task-meta-*", count=1000)
        if f"run={run.id}/" in (backend.get(key) or b"").decode()
    ]
    assert stored == []
    chunks = services.ledger.get_chunks(run.id)
    assert sum(chunk.rows or 0 for chunk in chunks) == final.rows_written


def test_a_pickle_message_is_refused_and_the_worker_keeps_serving(
    celery_app: EtlCelery, worker: Any, services: Services
) -> None:
    seed_orders(services.source_engine, 1_000)
    target, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 11, 3)),
        logical_date=date(2026, 11, 3),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 500},
    )
    plan_run(services, target.id)  # chunks recorded, nothing dispatched

    celery_app.send_task(TASK_TRANSFORM_CHUNK, args=[target.id, 0], serializer="pickle")
    # A legitimate run queued behind the pickle message completes: the worker went on.
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        "orders_daily", interval=date(2026, 11, 4)
    )
    assert wait_for_run(services.ledger, run.id, timeout_s=60).state is RunState.SUCCEEDED
    chunk = services.ledger.get_chunk(target.id, 0)
    assert chunk.state is ChunkState.PENDING and chunk.attempts == 0


def test_a_repeated_scheduled_dispatch_starts_one_run(
    celery_app: EtlCelery, worker: Any, services: Services
) -> None:
    seed_orders(services.source_engine, 500)
    first = celery_app.send_task(TASK_START_SCHEDULED_RUN, args=["orders_daily"])
    second = celery_app.send_task(TASK_START_SCHEDULED_RUN, args=["orders_daily"])
    # The task ignores its result; the ledger shows what happened.
    scheduled = wait_until(
        lambda: [
            r
            for r in services.ledger.list_runs(pipeline="orders_daily")
            if r.trigger is Trigger.SCHEDULE
        ],
        timeout_s=30,
        what="the scheduled run",
    )
    run = wait_for_run(services.ledger, scheduled[0].id, timeout_s=60)
    assert run.state is RunState.SUCCEEDED, run.reason
    assert first.id != second.id
    all_scheduled = [
        r
        for r in services.ledger.list_runs(pipeline="orders_daily", limit=500)
        if r.trigger is Trigger.SCHEDULE
    ]
    assert [r.id for r in all_scheduled] == [run.id]


def test_a_transform_raising_key_error_fails_its_chunk_and_its_run_naming_it(
    celery_app: EtlCelery, worker: Any, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reads_a_missing_column(rows: Any) -> BatchResult:
        return BatchResult(records=[{"x": row["no_such_column"]} for row in rows])

    broken = dataclasses.replace(
        ORDERS_DAILY,
        name="broken_orders",
        transform=reads_a_missing_column,
        columnar_transform=None,
        schedule=None,
    )
    monkeypatch.setitem(PIPELINES, broken.name, broken)
    seed_orders(services.source_engine, 1_000)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        broken.name, interval=date(2026, 11, 3), params={"chunk_size": 1_000}
    )

    final = wait_for_run(services.ledger, run.id, timeout_s=60)

    assert final.state is RunState.FAILED
    assert final.reason is not None and "chunk 0 failed: KeyError" in final.reason
    assert services.ledger.get_chunk(run.id, 0).state is ChunkState.FAILED
