"""The reliability catalogue, proven with real worker processes, the real RabbitMQ and the
real PostgreSQL. Each test ends with the ledger reconciled: every planned chunk exactly
once in the manifest, or the run not succeeded with the reason visible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fault_pipelines import COLUMNAR_TABLES, SLOW_COPY_VIEW, SLOW_COPY_VIEW_SQL
from kombu import Connection
from sqlalchemy import text

from api import create_app
from etl.adapters.topology import COMMIT_QUEUE, PLAN_QUEUE, TRANSFORM_QUEUE
from etl.bootstrap import Services, build_services
from etl.config import Settings, settings_env
from etl.demo import seed_orders
from etl.domain.layout import run_prefix
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.pipelines import get_pipeline
from etl.service.dead_letters import DeadLetterService
from etl.service.execution import plan_run
from etl.service.lifecycle import RunService, celery_enqueue, wait_for_run
from etl.worker.app import TASK_COMMIT_RUN, TASK_TRANSFORM_CHUNK, EtlCelery, make_celery

from support import (
    API_TOKEN,
    SESSION_TAG,
    ChildProcess,
    RabbitMQNode,
    assert_run_output_matches_source,
    rabbitmqctl,
    scratch_rabbitmq_node,
    scratch_redis_db,
    scratch_vhost,
    wait_until,
)

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
SOURCE_ROWS = 20_000


@pytest.fixture(scope="module")
def fault_redis_url(redis_url: str) -> Iterator[str]:
    """A Redis database of this session's own, so a test may flush it (the result backend
    lost) without touching another session's keys."""
    with scratch_redis_db(redis_url) as url:
        yield url


@pytest.fixture(scope="module")
def fault_settings(service_settings: Settings, fault_redis_url: str) -> Settings:
    return service_settings.model_copy(
        update={"pipeline_modules": "fault_pipelines", "result_backend": fault_redis_url}
    )


@pytest.fixture(scope="module")
def fault_services(fault_settings: Settings) -> Iterator[Services]:
    built = build_services(fault_settings)
    built.parts.ensure_bucket()
    seed_orders(built.source_engine, SOURCE_ROWS)
    with built.source_engine.begin() as conn:
        conn.execute(text(SLOW_COPY_VIEW_SQL))  # slow_copy_orders' source
    yield built
    with built.source_engine.begin() as conn:
        # It depends on orders, which other modules drop and create again.
        conn.execute(text(f"DROP VIEW IF EXISTS {SLOW_COPY_VIEW}"))
    built.close()


@pytest.fixture(scope="module")
def own_broker() -> Iterator[RabbitMQNode]:
    """A RabbitMQ node of this session's own, for the test that stops a broker: stopping
    the machine's would stop it for every session."""
    with scratch_rabbitmq_node(f"etl-fault-{SESSION_TAG}") as node:
        yield node


@pytest.fixture
def app(fault_settings: Settings) -> EtlCelery:
    return make_celery(fault_settings)


@pytest.fixture
def faults_dir(tmp_path: Path) -> Path:
    path = tmp_path / "faults"
    path.mkdir()
    return path


@pytest.fixture
def start_worker(
    fault_settings: Settings, faults_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., ChildProcess]]:
    """Start `etl worker` processes that load the fault pipelines; all stopped at the end."""
    started: list[ChildProcess] = []

    def start(
        concurrency: int = 1,
        queues: str | None = None,
        settings: Settings | None = None,
        **env: str,
    ) -> ChildProcess:
        # Short retry waits keep the suite quick; backoff itself is unit-tested.
        env.setdefault("ETL_RETRY_BACKOFF_BASE_S", "0.2")
        args = ["worker", "--concurrency", str(concurrency)]
        if queues:
            args += ["--queues", queues]
        extra = {
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            "ETL_TEST_FAULTS_DIR": str(faults_dir),
            **env,
        }
        worker = ChildProcess.etl(
            args,
            settings or fault_settings,
            tmp_path / f"worker-{len(started)}.log",
            extra_env=extra,
        )
        started.append(worker)
        worker.wait_for_log("ready.")
        return worker

    yield start
    for worker in started:
        worker.stop()


def start(services: Services, app: EtlCelery, pipeline: str, chunk_size: int) -> Run:
    run, _ = RunService(services.ledger, celery_enqueue(app)).start_run(
        pipeline, logical_date=date(2026, 9, 1), params={"chunk_size": chunk_size}
    )
    return run


def running_chunks(services: Services, run_id: str) -> int:
    return services.ledger.chunk_counts(run_id)[ChunkState.RUNNING]


def max_attempts(services: Services, run_id: str) -> int:
    return max(chunk.attempts for chunk in services.ledger.get_chunks(run_id))


# A fault marked so runs on both read paths: the row path (a server-side cursor and the
# row transform) and the fast path (COPY's text into Arrow and the columnar transform),
# each slowed down by a second per batch so the fault lands mid-chunk.
ON_BOTH_PATHS = pytest.mark.parametrize(
    "pipeline", ["slow_orders", "slow_orders_columnar"], ids=["row-path", "fast-path"]
)


def assert_read_path(faults_dir: Path, pipeline: str) -> None:
    """The run's chunks took the path its pipeline names: the fault pipelines' columnar
    transforms count the tables they transform."""
    counted = faults_dir / COLUMNAR_TABLES
    tables = counted.stat().st_size if counted.exists() else 0
    if get_pipeline(pipeline).columnar_transform is None:
        assert tables == 0, f"{pipeline} went through the columnar transform"
    else:
        assert tables > 0, f"{pipeline} never went through the columnar transform"


@ON_BOTH_PATHS
def test_sigkill_of_a_worker_process_group_mid_chunk_loses_and_doubles_nothing(
    fault_services: Services,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
    pipeline: str,
) -> None:
    victim = start_worker(concurrency=1)
    start_worker(concurrency=1)
    run = start(fault_services, app, pipeline, 2_500)
    wait_until(
        lambda: running_chunks(fault_services, run.id) >= 2,
        timeout_s=60,
        what="both workers mid-chunk",
    )

    os.killpg(victim.process.pid, signal.SIGKILL)

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert max_attempts(fault_services, run.id) == 2  # the killed chunk ran again elsewhere
    assert_read_path(faults_dir, pipeline)
    assert_run_output_matches_source(fault_services, final)


@ON_BOTH_PATHS
def test_sigkill_of_one_pool_child_redelivers_its_chunk(
    fault_services: Services,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
    pipeline: str,
) -> None:
    worker = start_worker(concurrency=2)
    run = start(fault_services, app, pipeline, 2_500)
    # Both pool processes busy, so the one killed is surely mid-chunk.
    wait_until(
        lambda: running_chunks(fault_services, run.id) >= 2, timeout_s=60, what="two chunks running"
    )
    children = subprocess.run(
        ["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(children) == 2, children

    os.kill(int(children[0]), signal.SIGKILL)

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert worker.alive()
    assert_read_path(faults_dir, pipeline)
    assert_run_output_matches_source(fault_services, final)
    # The killed child's chunk was delivered again and finished on the second attempt.
    attempts = sorted(c.attempts for c in fault_services.ledger.get_chunks(run.id))
    assert attempts[-1] == 2 and attempts[:-1] == [1] * (len(attempts) - 1), attempts


def test_a_poison_chunk_is_dead_lettered_and_fails_the_run_naming_it(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2, ETL_TEST_POISON_KEY="7777")
    run = start(fault_services, app, "poison_orders", 2_500)  # key 7777 is in chunk 3

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.FAILED
    assert (
        final.reason is not None
        and "chunk 3 failed" in final.reason
        and "poison row 7777" in final.reason
    )
    # The other chunks were all done; only the poison one failed, after one attempt.
    wait_until(
        lambda: fault_services.ledger.chunk_counts(run.id)[ChunkState.DONE] == 7,
        timeout_s=60,
        what="other chunks",
    )
    poisoned = fault_services.ledger.get_chunk(run.id, 3)
    assert poisoned.state is ChunkState.FAILED and poisoned.attempts == 1
    prefix = run_prefix(fault_settings.s3_prefix, "poison_orders", final.logical_date, run.id)
    assert not any(
        key.endswith(("_manifest.json", "_SUCCESS"))
        for key in fault_services.parts.list_keys(prefix)
    )

    dead_letters = DeadLetterService(
        fault_services.ledger, fault_settings.broker_url, lambda run_id: None
    )
    letters = wait_until(
        lambda: dead_letters.list_letters(run_id=run.id),
        timeout_s=30,
        what="the dead letter in the ledger",
    )
    assert [(x.task, x.chunk_index, x.queue) for x in letters] == [
        ("etl.transform_chunk", 3, "etl.transform")
    ]
    assert "poison row 7777" in letters[0].reason and letters[0].death_reason == "rejected"

    # The CLI shows it with its reason, and exits 0.
    listed = subprocess.run(
        [sys.executable, "-m", "etl", "dlq", "list", "--run", run.id],
        env={**os.environ, **settings_env(fault_settings), "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "etl.transform_chunk" in listed.stdout and "poison row 7777" in listed.stdout

    # And so does the API.
    client = create_app(fault_settings).test_client()
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    answer = client.get(f"/api/v1/dead-letters?run_id={run.id}", headers=token)
    assert answer.status_code == 200
    [shown] = answer.get_json()["dead_letters"]
    assert shown["chunk_index"] == 3 and "poison row 7777" in shown["reason"]
    assert shown["death_reason"] == "rejected" and shown["queue"] == "etl.transform"


def test_transient_errors_are_retried_with_backoff_then_succeed(
    fault_services: Services, app: EtlCelery, start_worker: Callable[..., ChildProcess]
) -> None:
    start_worker(concurrency=2, ETL_TEST_FLAKY_FAILURES="2")
    run = start(fault_services, app, "flaky_orders", 5_000)

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert fault_services.ledger.get_chunk(run.id, 0).attempts == 3  # failed twice, then done
    assert assert_run_output_matches_source(fault_services, final)["total_rows"] > 0


def test_retries_exhausted_are_dead_lettered_not_acked(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2, ETL_TEST_FLAKY_FAILURES="1000")
    run = start(fault_services, app, "flaky_orders", 5_000)

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=240)
    assert final.state is RunState.FAILED
    assert final.reason is not None and "retries exhausted" in final.reason
    assert fault_services.ledger.get_chunk(run.id, 0).attempts == 6  # 1 + 5 retries
    dead_letters = DeadLetterService(
        fault_services.ledger, fault_settings.broker_url, lambda run_id: None
    )
    letters = wait_until(
        lambda: dead_letters.list_letters(run_id=run.id), timeout_s=30, what="the dead letter"
    )
    assert [x.chunk_index for x in letters] == [0]


def test_rabbitmq_connections_closed_mid_run_do_not_lose_the_run(
    fault_services: Services,
    rabbitmq_vhost: str,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2)
    run = start(fault_services, app, "slow_orders", 2_500)
    wait_until(
        lambda: running_chunks(fault_services, run.id) >= 1, timeout_s=60, what="a chunk running"
    )

    rabbitmqctl("close_all_connections", "-p", rabbitmq_vhost, "fault test: connections closed")

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=180)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_run_output_matches_source(fault_services, final)


@ON_BOTH_PATHS
def test_rabbitmq_stopped_and_started_mid_run_does_not_lose_the_run(
    fault_services: Services,
    fault_settings: Settings,
    own_broker: RabbitMQNode,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
    pipeline: str,
) -> None:
    settings = fault_settings.model_copy(update={"broker_url": own_broker.url})
    start_worker(concurrency=2, settings=settings)
    run = start(fault_services, make_celery(settings), pipeline, 2_500)
    wait_until(
        lambda: running_chunks(fault_services, run.id) >= 1, timeout_s=60, what="a chunk running"
    )

    own_broker.ctl("stop_app")
    try:
        # The broker is really down: a connection attempt is refused.
        with pytest.raises(Exception), Connection(own_broker.url, connect_timeout=2) as conn:  # noqa: B017
            conn.ensure_connection(max_retries=1)
        # The machine's broker, which every other session uses, is not.
        with Connection(fault_settings.broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        own_broker.ctl("start_app")
    own_broker.ctl("await_startup")

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=240)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_read_path(faults_dir, pipeline)
    assert_run_output_matches_source(fault_services, final)


@dataclass(frozen=True)
class SlowRead:
    """A pipeline whose chunks read slowly on one path, and what a worker's backend
    looks like in the middle of such a read."""

    pipeline: str
    worker_env: dict[str, str]
    mid_read: str  # a condition on pg_stat_activity


SLOW_READS = [
    # Two 5,000-row batches per chunk: the worker pauses between them with its
    # server-side cursor open, idle in a transaction.
    pytest.param(
        SlowRead("slow_orders", {"ETL_TEST_SLOW_BATCH_S": "2"}, "state = 'idle in transaction'"),
        id="row-path",
    ),
    # The fast path reads a whole chunk with one COPY before transforming it; this
    # pipeline's COPY waits at every 1,000th row, active the while.
    pytest.param(
        SlowRead("slow_copy_orders", {}, "state = 'active' AND query LIKE 'COPY (SELECT%'"),
        id="fast-path",
    ),
]


@pytest.mark.parametrize("case", SLOW_READS)
def test_postgres_backend_terminated_mid_chunk_is_retried(
    fault_services: Services,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
    case: SlowRead,
) -> None:
    start_worker(concurrency=2, **case.worker_env)
    run = start(fault_services, app, case.pipeline, 10_000)
    wait_until(
        lambda: running_chunks(fault_services, run.id) >= 1, timeout_s=60, what="a chunk running"
    )
    wait_until(
        lambda: _worker_backends(fault_services, case.mid_read),
        timeout_s=30,
        what="a worker mid-read",
    )

    terminated = _worker_backends(fault_services, case.mid_read, terminate=True)
    assert terminated >= 1

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=180)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert max_attempts(fault_services, run.id) >= 2
    assert_read_path(faults_dir, case.pipeline)
    assert_run_output_matches_source(fault_services, final)


def _worker_backends(services: Services, condition: str, *, terminate: bool = False) -> int:
    """How many workers' backends match ``condition``, terminating them if asked. Only
    in this session's database: other sessions' workers are not ours to stop."""
    counted = "pg_terminate_backend(pid)" if terminate else "*"
    query = (
        f"SELECT count({counted}) FROM pg_stat_activity WHERE datname = current_database() "
        f"AND application_name = 'nightly-etl' AND pid <> pg_backend_pid() AND {condition}"
    )
    with services.ledger.engine.connect() as conn:
        return int(conn.execute(text(query)).scalar() or 0)


def test_a_crash_between_the_last_chunk_and_the_commit_is_recovered_by_the_reconciler(
    fault_services: Services,
    fault_settings: Settings,
    rabbitmq_vhost: str,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    # No worker consumes etl.commit yet: the chord's callback waits there, and is lost.
    start_worker(concurrency=2, queues=f"{PLAN_QUEUE},{TRANSFORM_QUEUE}")
    run = start(fault_services, app, "orders_daily", 5_000)
    wait_until(
        lambda: fault_services.ledger.chunk_counts(run.id)[ChunkState.DONE] == 4,
        timeout_s=60,
        what="all chunks done",
    )
    wait_until(
        lambda: _queue_depth(rabbitmq_vhost, COMMIT_QUEUE) == 1,
        timeout_s=30,
        what="the commit message",
    )
    rabbitmqctl("purge_queue", "-p", rabbitmq_vhost, COMMIT_QUEUE)

    # Readers see nothing of the run: no manifest, no _SUCCESS.
    assert fault_services.ledger.get_run(run.id).state is RunState.RUNNING
    prefix = run_prefix(fault_settings.s3_prefix, "orders_daily", run.logical_date, run.id)
    assert not any(
        key.endswith(("_manifest.json", "_SUCCESS"))
        for key in fault_services.parts.list_keys(prefix)
    )

    start_worker(concurrency=1, queues=COMMIT_QUEUE)
    reconciled = subprocess.run(
        [sys.executable, "-m", "etl", "reconcile"],
        env={**os.environ, **settings_env(fault_settings), "ETL_RECONCILE_STALE_S": "1",
             "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert reconciled.returncode == 0, reconciled.stderr
    assert f"sent commit for run {run.id}" in reconciled.stdout

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_run_output_matches_source(fault_services, final)


def test_chunk_messages_lost_from_the_queue_are_sent_again_by_the_reconciler(
    fault_services: Services,
    fault_settings: Settings,
    rabbitmq_vhost: str,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    # Only the planner runs: the chord's chunk messages wait in etl.transform, and are lost.
    start_worker(concurrency=1, queues=PLAN_QUEUE)
    run = start(fault_services, app, "orders_daily", 2_500)
    wait_until(
        lambda: _queue_depth(rabbitmq_vhost, TRANSFORM_QUEUE) == 8,
        timeout_s=60,
        what="the eight chunk messages",
    )
    rabbitmqctl("purge_queue", "-p", rabbitmq_vhost, TRANSFORM_QUEUE)
    start_worker(concurrency=2, queues=f"{TRANSFORM_QUEUE},{COMMIT_QUEUE}")
    # the run would now wait for its deadline: every chunk pending, none running
    wait_until(
        lambda: (
            datetime.now(UTC) - fault_services.ledger.last_activity(run.id) > timedelta(seconds=2)
        ),
        timeout_s=30,
        what="the run idle for longer than the reconciler's stale time",
    )
    assert fault_services.ledger.chunk_counts(run.id)[ChunkState.PENDING] == 8

    reconciled = _etl(fault_settings, "reconcile", ETL_RECONCILE_STALE_S="1")

    assert reconciled.returncode == 0, reconciled.stderr
    assert f"sent plan for run {run.id}: 8 chunks pending and none running" in reconciled.stdout
    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_run_output_matches_source(fault_services, final)


def _queue_depth(vhost: str, queue: str) -> int:
    for line in rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def test_the_same_chunk_delivered_twice_at_once_gives_one_part_and_one_manifest_entry(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=1)
    start_worker(concurrency=1)
    run, _ = fault_services.ledger.create_run(
        pipeline="slow_orders", logical_date=date(2026, 9, 2), trigger=Trigger.MANUAL,
        params={"chunk_size": 1_000_000},
    )  # fmt: skip
    plan_run(fault_services, run.id)  # one chunk, recorded, not dispatched

    app.send_task(TASK_TRANSFORM_CHUNK, args=[run.id, 0])
    app.send_task(TASK_TRANSFORM_CHUNK, args=[run.id, 0])
    wait_until(
        lambda: fault_services.ledger.get_chunk(run.id, 0).attempts == 2,
        timeout_s=60,
        what="both deliveries running",
    )
    wait_until(
        lambda: fault_services.ledger.get_chunk(run.id, 0).state is ChunkState.DONE,
        timeout_s=60,
        what="chunk done",
    )
    app.send_task(TASK_COMMIT_RUN, args=[run.id])

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason
    manifest = assert_run_output_matches_source(fault_services, final)
    assert len(manifest["parts"]) == 1
    prefix = run_prefix(fault_settings.s3_prefix, "slow_orders", final.logical_date, run.id)
    assert len([key for key in fault_services.parts.list_keys(prefix) if "/part-" in key]) == 1


def _etl(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env={**os.environ, **settings_env(settings), "PYTHONPATH": str(TESTS_DIR), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_retry_reruns_only_the_unfinished_chunks_then_commits(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2, ETL_TEST_POISON_KEY="7777")
    run = start(fault_services, app, "poison_orders", 2_500)
    assert wait_for_run(fault_services.ledger, run.id, timeout_s=120).state is RunState.FAILED
    wait_until(
        lambda: fault_services.ledger.chunk_counts(run.id)[ChunkState.DONE] == 7,
        timeout_s=60,
        what="other chunks",
    )
    done_before = {
        c.index: c.sha256
        for c in fault_services.ledger.get_chunks(run.id)
        if c.state is ChunkState.DONE
    }

    (faults_dir / "poison-fixed").touch()  # the fix is deployed
    retried = _etl(fault_settings, "retry", run.id)
    assert retried.returncode == 0, retried.stderr

    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    chunks = fault_services.ledger.get_chunks(run.id)
    # The seven done chunks were not run again; chunk 3 ran once more.
    assert all(c.attempts == 1 for c in chunks)
    assert {c.index: c.sha256 for c in chunks if c.index != 3} == done_before
    assert_run_output_matches_source(fault_services, final)

    again = _etl(fault_settings, "retry", run.id)
    assert again.returncode == 1 and "only a failed run can be retried" in again.stderr


def test_replaying_a_dead_letter_retries_its_run_once(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2, ETL_TEST_POISON_KEY="12345")
    run = start(fault_services, app, "poison_orders", 5_000)  # key 12345 is in chunk 2
    assert wait_for_run(fault_services.ledger, run.id, timeout_s=120).state is RunState.FAILED
    dead_letters = DeadLetterService(
        fault_services.ledger, fault_settings.broker_url, lambda run_id: None
    )
    [letter] = wait_until(
        lambda: dead_letters.list_letters(run_id=run.id), timeout_s=30, what="the dead letter"
    )

    (faults_dir / "poison-fixed").touch()
    replayed = _etl(fault_settings, "dlq", "replay", str(letter.id))
    assert replayed.returncode == 0, replayed.stderr
    assert f"retried run {run.id}" in replayed.stdout
    final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_run_output_matches_source(fault_services, final)

    twice = _etl(fault_settings, "dlq", "replay", str(letter.id))
    assert twice.returncode == 0 and "already replayed; nothing sent" in twice.stdout
    through_api = (
        create_app(fault_settings)
        .test_client()
        .post(
            f"/api/v1/dead-letters/{letter.id}/replay",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
    )
    assert through_api.status_code == 200
    assert through_api.get_json() == {"id": letter.id, "action": "already replayed; nothing sent"}
    assert fault_services.ledger.get_dead_letter(letter.id).replay_count == 1
    assert fault_services.ledger.get_run(run.id).state is RunState.SUCCEEDED


def test_cancel_skips_pending_chunks_and_commits_nothing(
    fault_services: Services,
    fault_settings: Settings,
    rabbitmq_vhost: str,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=1)
    run = start(fault_services, app, "slow_orders", 2_500)  # 8 chunks, one at a time
    wait_until(
        lambda: running_chunks(fault_services, run.id) == 1,
        timeout_s=60,
        what="the first chunk running",
    )

    cancelled = _etl(fault_settings, "cancel", run.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert fault_services.ledger.get_run(run.id).state is RunState.CANCELLED

    # The worker drains every message of the run (each pending chunk is skipped).
    wait_until(
        lambda: (
            _queue_depth(rabbitmq_vhost, TRANSFORM_QUEUE) == 0
            and running_chunks(fault_services, run.id) == 0
        ),
        timeout_s=60,
        what="the run's messages consumed",
    )
    wait_until(
        lambda: _queue_depth(rabbitmq_vhost, COMMIT_QUEUE) == 0,
        timeout_s=30,
        what="the commit consumed",
    )
    chunks = fault_services.ledger.get_chunks(run.id)
    never_started = [c for c in chunks if c.attempts == 0]
    assert len(never_started) >= 6, [(c.index, c.state, c.attempts) for c in chunks]
    assert all(c.state is ChunkState.PENDING for c in never_started)
    prefix = run_prefix(fault_settings.s3_prefix, "slow_orders", run.logical_date, run.id)
    keys = fault_services.parts.list_keys(prefix)
    assert not any(key.endswith(("_manifest.json", "_SUCCESS")) for key in keys)
    assert fault_services.ledger.get_run(run.id).state is RunState.CANCELLED

    again = _etl(fault_settings, "cancel", run.id)
    assert again.returncode == 0  # cancelling a cancelled run is not an error
    refused = _etl(fault_settings, "cancel", str(uuid.uuid4()))
    assert refused.returncode == 1 and "no run with id" in refused.stderr


def test_losing_the_result_backend_mid_run_never_loses_the_run(
    fault_services: Services,
    fault_settings: Settings,
    app: EtlCelery,
    start_worker: Callable[..., ChildProcess],
) -> None:
    start_worker(concurrency=2)
    run = start(fault_services, app, "slow_orders", 2_500)
    wait_until(
        lambda: fault_services.ledger.chunk_counts(run.id)[ChunkState.DONE] >= 2,
        timeout_s=60,
        what="two chunks done",
    )
    import redis

    # The chord's counter is gone. The database is this session's own (fault_redis_url).
    redis.Redis.from_url(fault_settings.result_backend).flushdb()

    wait_until(
        lambda: fault_services.ledger.chunk_counts(run.id)[ChunkState.DONE] == 8,
        timeout_s=120,
        what="all chunks",
    )
    # Celery keeps the chord's size in Redis: without it the callback never fires.
    assert fault_services.ledger.get_run(run.id).state is RunState.RUNNING
    # The reconciler leaves a run alone until it has been idle ETL_RECONCILE_STALE_S.
    wait_until(
        lambda: (
            datetime.now(UTC) - fault_services.ledger.last_activity(run.id) > timedelta(seconds=2)
        ),
        timeout_s=30,
        what="the run idle for longer than the reconciler's stale time",
    )
    reconciled = _etl(fault_settings, "reconcile", ETL_RECONCILE_STALE_S="1")
    assert reconciled.returncode == 0, reconciled.stderr
    assert f"sent commit for run {run.id}" in reconciled.stdout
    final = wait_for_run(fault_services.ledger, run.id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason
    assert_run_output_matches_source(fault_services, final)


def test_a_run_on_quorum_queues_completes(
    fault_services: Services,
    fault_settings: Settings,
    rabbitmq_vhost: str,
    faults_dir: Path,
    tmp_path: Path,
) -> None:
    with scratch_vhost(f"{rabbitmq_vhost}-quorum") as vhost:
        broker = fault_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}"
        quorum = fault_settings.model_copy(update={"broker_url": broker, "queue_type": "quorum"})
        worker = ChildProcess.etl(
            ["worker", "--concurrency", "2"], quorum, tmp_path / "quorum-worker.log",
            extra_env={"PYTHONPATH": str(TESTS_DIR), "ETL_TEST_FAULTS_DIR": str(faults_dir)},
        )  # fmt: skip
        try:
            worker.wait_for_log("ready.")
            types = rabbitmqctl("list_queues", "-p", vhost, "name", "type")
            assert f"{TRANSFORM_QUEUE}\tquorum" in types

            run = start(fault_services, make_celery(quorum), "orders_daily", 5_000)
            final = wait_for_run(fault_services.ledger, run.id, timeout_s=120)
            assert final.state is RunState.SUCCEEDED, final.reason
            assert_run_output_matches_source(fault_services, final)
        finally:
            worker.stop()
