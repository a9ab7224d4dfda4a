"""Runaway plans (issue 12, item 4), with a real worker on the real broker: a plan over
ETL_MAX_CHUNKS_PER_RUN is refused before anything is recorded or sent, and a cancel
stops the publishing of a large plan between batches.

The worker consumes etl.plan only, so every chunk message it publishes stays in
etl.transform, where the test counts it."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import COMMIT_QUEUE, PLAN_QUEUE, TRANSFORM_QUEUE, queue_stats
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import Run, RunState
from etl.service.execution import DISPATCH_BATCH
from etl.service.lifecycle import RunService
from etl.worker.app import celery_enqueue, make_celery

from support import ChildProcess, rabbitmqctl, wait_until

pytestmark = pytest.mark.e2e

# The reproduction: chunk_size=5 on 300,000 rows would be 60,000 chunks.
SOURCE_ROWS = 300_000


@pytest.fixture(scope="module")
def seeded(services: Services) -> int:
    return seed_orders(services.source_engine, SOURCE_ROWS)


@pytest.fixture
def planner(
    service_settings: Settings, seeded: int, rabbitmq_vhost: str, tmp_path: Path
) -> Iterator[ChildProcess]:
    """One `etl worker` that only plans; the chunk queues start and end empty."""
    yield from start_worker(service_settings, rabbitmq_vhost, tmp_path, PLAN_QUEUE)


@pytest.fixture
def worker(
    service_settings: Settings, seeded: int, rabbitmq_vhost: str, tmp_path: Path
) -> Iterator[ChildProcess]:
    """One `etl worker` on every queue, two pool processes."""
    yield from start_worker(service_settings, rabbitmq_vhost, tmp_path, None, concurrency=2)


def start_worker(
    settings: Settings, vhost: str, tmp_path: Path, queues: str | None, concurrency: int = 1
) -> Iterator[ChildProcess]:
    """An `etl worker` on ``queues`` (None: all), with the chunk queues emptied before and
    after it."""
    args = ["worker", "--concurrency", str(concurrency)]
    worker = ChildProcess.etl(
        args + (["--queues", queues] if queues else []), settings, tmp_path / "worker.log"
    )

    def purge() -> None:
        for queue in (TRANSFORM_QUEUE, COMMIT_QUEUE):
            rabbitmqctl("purge_queue", "-p", vhost, queue)

    try:
        worker.wait_for_log("ready.")  # the worker declared the topology first
        purge()
        yield worker
    finally:
        worker.stop()
        purge()


def start_run(services: Services, settings: Settings, chunk_size: int) -> Run:
    run_service = RunService(services.ledger, celery_enqueue(make_celery(settings)))
    run, _ = run_service.start_run(
        "orders_daily", interval=date(2026, 12, 1), params={"chunk_size": chunk_size}
    )
    return run


def queued_chunks(settings: Settings) -> int:
    return queue_stats(settings.broker_url, [TRANSFORM_QUEUE])[TRANSFORM_QUEUE][0]


def test_a_plan_over_the_limit_records_nothing_sends_nothing_and_fails_its_run(
    planner: ChildProcess, services: Services, service_settings: Settings
) -> None:
    began = time.monotonic()
    run = start_run(services, service_settings, chunk_size=5)

    failed = wait_until(
        lambda: (r := services.ledger.get_run(run.id)).is_terminal and r,
        timeout_s=60,
        what="the runaway plan to end",
    )
    refused_after_s = time.monotonic() - began

    assert failed.state is RunState.FAILED
    assert failed.reason == (
        "plan refused: pipeline orders_daily would plan 60,000 chunks (300,000 rows at "
        "chunk_size 5), over the limit of 10,000 chunks a run: use a chunk_size of at "
        "least 30, or raise ETL_MAX_CHUNKS_PER_RUN"
    )
    assert failed.chunk_count is None and not failed.window
    assert services.ledger.get_chunks(run.id) == []
    stats = queue_stats(service_settings.broker_url, [TRANSFORM_QUEUE, COMMIT_QUEUE])
    assert stats[TRANSFORM_QUEUE][0] == stats[COMMIT_QUEUE][0] == 0
    planner.wait_for_log(f"run {run.id} refused: pipeline orders_daily would plan 60,000")
    assert planner.alive()
    print(f"a 60,000-chunk plan refused {refused_after_s:.2f} s after start_run")


def test_a_cancel_during_dispatch_stops_the_publishing_of_a_large_plan(
    planner: ChildProcess, services: Services, service_settings: Settings
) -> None:
    # 300,000 rows at chunk_size 30: 10,000 chunks, the most a run may have, and
    # 20 batches to publish.
    planned = SOURCE_ROWS // 30
    began = time.monotonic()
    run = start_run(services, service_settings, chunk_size=30)
    wait_until(
        lambda: queued_chunks(service_settings) > 0,
        timeout_s=60,
        what="the first chunk messages",
        poll_s=0.02,
    )
    first_seen_s = time.monotonic() - began

    # Freeze the planner mid-publishing, cancel, let it go on: deterministic, however
    # fast it publishes.
    os.killpg(planner.process.pid, signal.SIGSTOP)
    try:
        at_cancel = queued_chunks(service_settings)
        cancelled = RunService(
            services.ledger, celery_enqueue(make_celery(service_settings))
        ).cancel_run(run.id)
    finally:
        os.killpg(planner.process.pid, signal.SIGCONT)
    assert cancelled.state is RunState.CANCELLED
    planner.wait_for_log("'dispatched': ")  # plan_run's outcome, once it stopped publishing

    published = queued_chunks(service_settings)
    print(
        f"first chunk messages {first_seen_s:.2f} s after start_run; cancelled with "
        f"{at_cancel} queued; publishing stopped at {published} of {planned}"
    )
    assert at_cancel <= published < planned
    assert published % DISPATCH_BATCH == 0, "dispatch stops only between whole batches"
    log = planner.log()
    assert f"run {run.id} is cancelled: stopped dispatching after {published} of {planned}" in log
    assert f"'dispatched': {published}}}" in log
    # The chunks were recorded (a retry would dispatch them); the run stays cancelled.
    assert len(services.ledger.get_chunks(run.id)) == planned
    assert services.ledger.get_run(run.id).state is RunState.CANCELLED


def test_a_plan_of_several_batches_runs_to_its_commit(
    worker: ChildProcess, services: Services, service_settings: Settings
) -> None:
    # 600 chunks: a full batch and a part one, so the chord's size is known only when
    # its last chunk message goes out, after the chunks of the first batch ran.
    run = start_run(services, service_settings, chunk_size=500)

    ended = wait_until(
        lambda: (r := services.ledger.get_run(run.id)).is_terminal and r,
        timeout_s=300,
        what="the 600-chunk run to end",
        poll_s=0.5,
    )

    assert ended.state is RunState.SUCCEEDED, ended.reason
    assert ended.chunk_count == 600
    assert (ended.rows_written or 0) + (ended.rows_rejected or 0) == SOURCE_ROWS
    manifest = json.loads(services.parts.get_bytes(ended.manifest_key or ""))
    assert [part["key"].rsplit("/", 1)[1] for part in manifest["parts"]] == [
        f"part-{index:05d}.jsonl.gz" for index in range(600)
    ]
    assert "'dispatched': 600}" in worker.log()
