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


@pytest.mark.parametrize(
    ("rows", "chunk_size"), [(20_000, 1_000_000), (2_000, 100)], ids=["one big", "twenty small"]
)
def test_a_chunk_result_on_the_result_backend_is_under_1kb(
    celery_app: EtlCelery,
    worker: Any,
    services: Services,
    redis_url: str,
    rows: int,
    chunk_size: int,
) -> None:
    seed_orders(services.source_engine, rows)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        "orders_daily", interval=date(2026, 11, 2), params={"chunk_size": chunk_size}
    )
    final = wait_for_run(services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED and final.chunk_count == -(-rows // chunk_size)

    # What the chord's chunk tasks stored during the run, read raw from Redis.
    backend = redis.Redis.from_url(redis_url)
    stored = []
    for key in backend.scan_iter("celery-task-meta-*", count=1000):
        raw = backend.get(key)
        result = json.loads(raw or b"{}").get("result")
        if isinstance(result, dict) and f"run={run.id}/" in str(result.get("key")):
            stored.append((raw, result))
    assert len(stored) == final.chunk_count
    for raw, result in stored:
        assert set(result) == {"key", "rows", "bytes", "sha256"}
        assert raw is not None and len(raw) < 1024, f"{len(raw or b'')} bytes on the backend"
    assert sum(result["rows"] for _, result in stored) == final.rows_written


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
