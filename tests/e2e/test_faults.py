"""The reliability catalogue, proven with real worker processes, the real RabbitMQ and the
real PostgreSQL. Each test ends with the ledger reconciled: every planned chunk exactly
once in the manifest, or the run not succeeded with the reason visible."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fault_pipelines import COLUMNAR_TABLES, SLOW_COPY_VIEW, SLOW_COPY_VIEW_SQL
from kombu import Connection
from sqlalchemy import text

from api import create_app
from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import COMMIT_QUEUE, PLAN_QUEUE, TRANSFORM_QUEUE, WORK_QUEUES
from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.dead_letters import DeadLetter
from etl.domain.layout import run_prefix
from etl.domain.runs import Chunk, ChunkState, Run, RunState, Trigger
from etl.pipelines import get_pipeline
from etl.service.execution import plan_run
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import (
    TASK_COMMIT_RUN,
    TASK_TRANSFORM_CHUNK,
    EtlCelery,
    celery_enqueue,
    make_celery,
)

from builders import keys_under, utc_day
from support import (
    API_TOKEN,
    SESSION_TAG,
    ChildProcess,
    RabbitMQNode,
    assert_run_output_matches_source,
    list_queues,
    queue_depth,
    rabbitmqctl,
    run_etl,
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


@dataclass(frozen=True)
class FaultRig:
    """What a fault test works with: this module's services and settings (the fault
    pipelines, a Redis database of its own), the session's vhost, a Celery app on it,
    the directory the fault pipelines read their switches from, and ``start_worker``."""

    services: Services
    settings: Settings
    vhost: str
    app: EtlCelery
    faults_dir: Path
    start_worker: Callable[..., ChildProcess]

    def start(self, pipeline: str, chunk_size: int, *, app: EtlCelery | None = None) -> Run:
        """Start a run of ``pipeline`` for 2026-09-01, its chunks sent through ``app``."""
        enqueue = celery_enqueue(app or self.app)
        run, _ = RunService(self.services.ledger, enqueue).start_run(
            pipeline, interval=date(2026, 9, 1), params={"chunk_size": chunk_size}
        )
        return run


@pytest.fixture
def rig(
    fault_services: Services,
    fault_settings: Settings,
    rabbitmq_vhost: str,
    app: EtlCelery,
    faults_dir: Path,
    start_worker: Callable[..., ChildProcess],
) -> FaultRig:
    # The vhost is the session's: a message an earlier test left in a work queue (its
    # workers stopped before they took it) would be counted, or run, in this one.
    for queue in list_queues(rabbitmq_vhost):
        if queue in WORK_QUEUES:
            rabbitmqctl("purge_queue", "-p", rabbitmq_vhost, queue)
    return FaultRig(fault_services, fault_settings, rabbitmq_vhost, app, faults_dir, start_worker)


def running_chunks(services: Services, run_id: str) -> int:
    return services.ledger.chunk_counts(run_id)[ChunkState.RUNNING]


def max_attempts(services: Services, run_id: str) -> int:
    return max(chunk.attempts for chunk in services.ledger.get_chunks(run_id))


def wait_running(services: Services, run_id: str, at_least: int = 1) -> None:
    """Wait until at least ``at_least`` of the run's chunks are running."""
    wait_until(
        lambda: running_chunks(services, run_id) >= at_least,
        timeout_s=60,
        what=f"{at_least} chunk(s) of run {run_id} running",
    )


def wait_settled(services: Services, run: Run) -> list[Chunk]:
    """Wait until no chunk of an ended run is running (those in flight when it ended
    finished or were put back); check none started after the run ended. Its chunks."""
    wait_until(
        lambda: running_chunks(services, run.id) == 0,
        timeout_s=60,
        what=f"no chunk of run {run.id} running",
    )
    chunks = services.ledger.get_chunks(run.id)
    assert run.finished_at is not None
    late = [c.index for c in chunks if c.started_at and c.started_at > run.finished_at]
    assert late == [], f"chunks started after the run ended: {late}"
    return chunks


def wait_done(services: Services, run_id: str, count: int, *, timeout_s: float = 60) -> None:
    """Wait until exactly ``count`` of the run's chunks are done."""
    wait_until(
        lambda: services.ledger.chunk_counts(run_id)[ChunkState.DONE] == count,
        timeout_s=timeout_s,
        what=f"{count} chunk(s) of run {run_id} done",
    )


def assert_succeeds(services: Services, run_id: str, *, timeout_s: float) -> dict[str, Any]:
    """Wait for the run to end: it succeeded and its output is the whole transformed
    source (no row lost or doubled). Returns its manifest."""
    final = wait_for_run(services.ledger, run_id, timeout_s=timeout_s)
    assert final.state is RunState.SUCCEEDED, final.reason
    return assert_run_output_matches_source(services, final)


def assert_unpublished(services: Services, pipeline: str, run: Run) -> None:
    """Readers see nothing of the run: no manifest, no _SUCCESS under its prefix."""
    prefix = run_prefix(services.settings.s3_prefix, pipeline, f"dt={run.logical_date}", run.id)
    keys = keys_under(services.parts, prefix)
    assert not any(key.endswith(("_manifest.json", "_SUCCESS")) for key in keys), keys


def wait_for_dead_letters(services: Services, run_id: str) -> list[DeadLetter]:
    """The run's dead letters, once the ledger has recorded at least one."""
    letters: list[DeadLetter] = wait_until(
        lambda: services.dead_letters.list_letters(run_id=run_id),
        timeout_s=30,
        what=f"a dead letter of run {run_id} in the ledger",
    )
    return letters


def reconcile_when_idle(services: Services, settings: Settings, run_id: str, said: str) -> None:
    """Once the run has been idle longer than the reconciler's stale time (1 s here),
    `etl reconcile` succeeds and says ``said``."""
    wait_until(
        lambda: datetime.now(UTC) - services.ledger.last_activity(run_id) > timedelta(seconds=2),
        timeout_s=30,
        what="the run idle for longer than the reconciler's stale time",
    )
    reconciled = _etl(settings, "reconcile", ETL_RECONCILE_STALE_S="1")
    assert reconciled.returncode == 0, reconciled.stderr
    assert said in reconciled.stdout, reconciled.stdout


def _etl(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`etl <args>` in a subprocess that can load the fault pipelines; its outcome."""
    return run_etl(settings, *args, PYTHONPATH=str(TESTS_DIR), **env)


def waitqueue_depth(vhost: str, queue: str, depth: int, *, timeout_s: float = 60) -> None:
    """Wait until ``queue`` holds ``depth`` messages."""
    seen: list[int] = []

    def reached() -> bool:
        seen.append(queue_depth(vhost, queue))
        return seen[-1] == depth

    try:
        wait_until(reached, timeout_s=timeout_s, what=f"{depth} message(s) in {queue}")
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; it last held {seen[-1]}") from None


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
    rig: FaultRig, pipeline: str
) -> None:
    victim = rig.start_worker(concurrency=1)
    rig.start_worker(concurrency=1)
    run = rig.start(pipeline, 2_500)
    wait_running(rig.services, run.id, at_least=2)  # both workers mid-chunk

    os.killpg(victim.process.pid, signal.SIGKILL)

    assert_succeeds(rig.services, run.id, timeout_s=120)
    assert max_attempts(rig.services, run.id) == 2  # the killed chunk ran again elsewhere
    assert_read_path(rig.faults_dir, pipeline)


@ON_BOTH_PATHS
def test_sigkill_of_one_pool_child_redelivers_its_chunk(rig: FaultRig, pipeline: str) -> None:
    worker = rig.start_worker(concurrency=2)
    run = rig.start(pipeline, 2_500)
    # Both pool processes busy, so the one killed is surely mid-chunk.
    wait_running(rig.services, run.id, at_least=2)
    children = subprocess.run(
        ["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(children) == 2, children

    os.kill(int(children[0]), signal.SIGKILL)

    assert_succeeds(rig.services, run.id, timeout_s=120)
    assert worker.alive()
    assert_read_path(rig.faults_dir, pipeline)
    # The killed child's chunk was delivered again and finished on the second attempt.
    attempts = sorted(c.attempts for c in rig.services.ledger.get_chunks(run.id))
    assert attempts[-1] == 2 and attempts[:-1] == [1] * (len(attempts) - 1), attempts


def test_a_poison_chunk_is_dead_lettered_and_fails_the_run_naming_it(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2, ETL_TEST_POISON_KEY="7777")
    run = rig.start("poison_orders", 2_500)  # key 7777 is in chunk 3

    final = wait_for_run(rig.services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.FAILED
    assert (
        final.reason is not None
        and "chunk 3 failed" in final.reason
        and "poison row 7777" in final.reason
    )
    # Only the poison chunk failed, after one attempt; the chunks started before the run
    # failed were done (or put back if still in flight), and none started after it.
    chunks = wait_settled(rig.services, final)
    poisoned = rig.services.ledger.get_chunk(run.id, 3)
    assert poisoned.state is ChunkState.FAILED and poisoned.attempts == 1
    assert [c.index for c in chunks if c.state is ChunkState.FAILED] == [3]
    assert_unpublished(rig.services, "poison_orders", final)

    letters = wait_for_dead_letters(rig.services, run.id)
    assert [(x.task, x.chunk_index, x.queue) for x in letters] == [
        ("etl.transform_chunk", 3, "etl.transform")
    ]
    assert "poison row 7777" in letters[0].reason and letters[0].death_reason == "rejected"

    # The CLI shows it with its reason, and exits 0.
    listed = _etl(rig.settings, "dlq", "list", "--run", run.id)
    assert listed.returncode == 0, listed.stderr
    assert "etl.transform_chunk" in listed.stdout and "poison row 7777" in listed.stdout

    # And so does the API.
    client = create_app(rig.settings).test_client()
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    answer = client.get(f"/api/v1/dead-letters?run_id={run.id}", headers=token)
    assert answer.status_code == 200
    [shown] = answer.get_json()["dead_letters"]
    assert shown["chunk_index"] == 3 and "poison row 7777" in shown["reason"]
    assert shown["death_reason"] == "rejected" and shown["queue"] == "etl.transform"


def test_transient_errors_are_retried_with_backoff_then_succeed(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2, ETL_TEST_FLAKY_FAILURES="2")
    run = rig.start("flaky_orders", 5_000)

    manifest = assert_succeeds(rig.services, run.id, timeout_s=120)
    assert rig.services.ledger.get_chunk(run.id, 0).attempts == 3  # failed twice, then done
    assert manifest["total_rows"] > 0


def test_retries_exhausted_are_dead_lettered_not_acked(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2, ETL_TEST_FLAKY_FAILURES="1000")
    run = rig.start("flaky_orders", 5_000)

    final = wait_for_run(rig.services.ledger, run.id, timeout_s=240)
    assert final.state is RunState.FAILED
    assert final.reason is not None and "retries exhausted" in final.reason
    assert rig.services.ledger.get_chunk(run.id, 0).attempts == 6  # 1 + 5 retries
    letters = wait_for_dead_letters(rig.services, run.id)
    assert [x.chunk_index for x in letters] == [0]


def test_rabbitmq_connections_closed_mid_run_do_not_lose_the_run(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2)
    run = rig.start("slow_orders", 2_500)
    wait_running(rig.services, run.id)

    rabbitmqctl("close_all_connections", "-p", rig.vhost, "fault test: connections closed")

    assert_succeeds(rig.services, run.id, timeout_s=180)


@ON_BOTH_PATHS
def test_rabbitmq_stopped_and_started_mid_run_does_not_lose_the_run(
    rig: FaultRig, own_broker: RabbitMQNode, pipeline: str
) -> None:
    settings = rig.settings.model_copy(update={"broker_url": own_broker.url})
    rig.start_worker(concurrency=2, settings=settings)
    run = rig.start(pipeline, 2_500, app=make_celery(settings))
    wait_running(rig.services, run.id)

    own_broker.ctl("stop_app")
    try:
        # The broker is really down: a connection attempt is refused.
        with pytest.raises(Exception), Connection(own_broker.url, connect_timeout=2) as conn:  # noqa: B017
            conn.ensure_connection(max_retries=1)
        # The machine's broker, which every other session uses, is not.
        with Connection(rig.settings.broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        own_broker.ctl("start_app")
    own_broker.ctl("await_startup")

    assert_succeeds(rig.services, run.id, timeout_s=240)
    assert_read_path(rig.faults_dir, pipeline)


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
def test_postgres_backend_terminated_mid_chunk_is_retried(rig: FaultRig, case: SlowRead) -> None:
    rig.start_worker(concurrency=2, **case.worker_env)
    run = rig.start(case.pipeline, 10_000)
    wait_running(rig.services, run.id)
    wait_until(
        lambda: _worker_backends(rig.services, case.mid_read),
        timeout_s=30,
        what="a worker mid-read",
    )

    terminated = _worker_backends(rig.services, case.mid_read, terminate=True)
    assert terminated >= 1

    assert_succeeds(rig.services, run.id, timeout_s=180)
    assert max_attempts(rig.services, run.id) >= 2
    assert_read_path(rig.faults_dir, case.pipeline)


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
    rig: FaultRig,
) -> None:
    # No worker consumes etl.commit yet: the commit the last chunk sent waits there, and
    # is lost. The run stays committing, claimed by that chunk, with nothing written.
    rig.start_worker(concurrency=2, queues=f"{PLAN_QUEUE},{TRANSFORM_QUEUE}")
    run = rig.start("orders_daily", 5_000)
    wait_done(rig.services, run.id, 4)
    waitqueue_depth(rig.vhost, COMMIT_QUEUE, 1, timeout_s=30)
    rabbitmqctl("purge_queue", "-p", rig.vhost, COMMIT_QUEUE)

    assert rig.services.ledger.get_run(run.id).state is RunState.COMMITTING
    assert_unpublished(rig.services, "orders_daily", run)

    rig.start_worker(concurrency=1, queues=COMMIT_QUEUE)
    reconcile_when_idle(rig.services, rig.settings, run.id, f"sent commit for run {run.id}")

    assert_succeeds(rig.services, run.id, timeout_s=60)


def test_chunk_messages_lost_from_the_queue_are_sent_again_by_the_reconciler(rig: FaultRig) -> None:
    # Only the planner runs: the chunk messages wait in etl.transform, and are lost.
    rig.start_worker(concurrency=1, queues=PLAN_QUEUE)
    run = rig.start("orders_daily", 2_500)
    waitqueue_depth(rig.vhost, TRANSFORM_QUEUE, 8)
    rabbitmqctl("purge_queue", "-p", rig.vhost, TRANSFORM_QUEUE)
    rig.start_worker(concurrency=2, queues=f"{TRANSFORM_QUEUE},{COMMIT_QUEUE}")
    # The run would now wait for its deadline: every chunk pending, none running.
    assert rig.services.ledger.chunk_counts(run.id)[ChunkState.PENDING] == 8

    reconcile_when_idle(
        rig.services,
        rig.settings,
        run.id,
        f"sent plan for run {run.id}: 8 chunks pending and none running",
    )

    assert_succeeds(rig.services, run.id, timeout_s=120)


def test_the_same_chunk_delivered_twice_at_once_gives_one_part_and_one_manifest_entry(
    rig: FaultRig,
) -> None:
    rig.start_worker(concurrency=1)
    rig.start_worker(concurrency=1)
    run, _ = rig.services.ledger.create_run(
        pipeline="slow_orders",
        interval=utc_day(date(2026, 9, 2)),
        logical_date=date(2026, 9, 2),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 1_000_000},
    )
    plan_run(rig.services, run.id)  # one chunk, recorded, not dispatched

    rig.app.send_task(TASK_TRANSFORM_CHUNK, args=[run.id, 0])
    rig.app.send_task(TASK_TRANSFORM_CHUNK, args=[run.id, 0])
    wait_until(
        lambda: rig.services.ledger.get_chunk(run.id, 0).attempts == 2,
        timeout_s=60,
        what="both deliveries running",
    )
    wait_done(rig.services, run.id, 1)
    rig.app.send_task(TASK_COMMIT_RUN, args=[run.id])

    manifest = assert_succeeds(rig.services, run.id, timeout_s=60)
    assert len(manifest["parts"]) == 1
    prefix = run_prefix(rig.settings.s3_prefix, "slow_orders", f"dt={run.logical_date}", run.id)
    assert len([key for key in keys_under(rig.services.parts, prefix) if "/part-" in key]) == 1


def test_retry_reruns_only_the_unfinished_chunks_then_commits(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2, ETL_TEST_POISON_KEY="7777")
    run = rig.start("poison_orders", 2_500)
    failed = wait_for_run(rig.services.ledger, run.id, timeout_s=120)
    assert failed.state is RunState.FAILED
    wait_settled(rig.services, failed)
    done_before = {
        c.index: c.sha256
        for c in rig.services.ledger.get_chunks(run.id)
        if c.state is ChunkState.DONE
    }

    (rig.faults_dir / "poison-fixed").touch()  # the fix is deployed
    retried = _etl(rig.settings, "retry", run.id)
    assert retried.returncode == 0, retried.stderr

    assert_succeeds(rig.services, run.id, timeout_s=120)
    chunks = rig.services.ledger.get_chunks(run.id)
    # The chunks done before were not run again; the others (chunk 3 and those the
    # failure stopped) ran in the retry.
    assert {c.index: c.sha256 for c in chunks if c.index in done_before} == done_before
    assert all(c.attempts == 1 for c in chunks if c.index in done_before)

    again = _etl(rig.settings, "retry", run.id)
    assert again.returncode == 1 and "only a failed run can be retried" in again.stderr


def test_replaying_a_dead_letter_retries_its_run_once(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2, ETL_TEST_POISON_KEY="12345")
    run = rig.start("poison_orders", 5_000)  # key 12345 is in chunk 2
    assert wait_for_run(rig.services.ledger, run.id, timeout_s=120).state is RunState.FAILED
    [letter] = wait_for_dead_letters(rig.services, run.id)

    (rig.faults_dir / "poison-fixed").touch()
    replayed = _etl(rig.settings, "dlq", "replay", str(letter.id))
    assert replayed.returncode == 0, replayed.stderr
    assert f"retried run {run.id}" in replayed.stdout
    assert_succeeds(rig.services, run.id, timeout_s=120)

    twice = _etl(rig.settings, "dlq", "replay", str(letter.id))
    assert twice.returncode == 0 and "already replayed; nothing sent" in twice.stdout
    through_api = (
        create_app(rig.settings)
        .test_client()
        .post(
            f"/api/v1/dead-letters/{letter.id}/replay",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
    )
    assert through_api.status_code == 200
    assert through_api.get_json() == {"id": letter.id, "action": "already replayed; nothing sent"}
    assert rig.services.ledger.get_dead_letter(letter.id).replay_count == 1
    assert rig.services.ledger.get_run(run.id).state is RunState.SUCCEEDED


def test_cancel_skips_pending_chunks_and_commits_nothing(rig: FaultRig) -> None:
    # Chunks of 3 s: `etl cancel` is a new process, and on a loaded machine its start
    # outran two 1-s chunks and started a third (5 never started, not 6).
    rig.start_worker(concurrency=1, ETL_TEST_SLOW_BATCH_S="3")
    run = rig.start("slow_orders", 2_500)  # 8 chunks, one at a time
    wait_running(rig.services, run.id)

    cancelled = _etl(rig.settings, "cancel", run.id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert rig.services.ledger.get_run(run.id).state is RunState.CANCELLED

    # The worker drains every message of the run (each pending chunk is skipped).
    wait_until(
        lambda: (
            queue_depth(rig.vhost, TRANSFORM_QUEUE) == 0
            and running_chunks(rig.services, run.id) == 0
        ),
        timeout_s=60,
        what="the run's messages consumed",
    )
    waitqueue_depth(rig.vhost, COMMIT_QUEUE, 0, timeout_s=30)
    chunks = rig.services.ledger.get_chunks(run.id)
    never_started = [c for c in chunks if c.attempts == 0]
    assert len(never_started) >= 6, [(c.index, c.state, c.attempts) for c in chunks]
    assert all(c.state is ChunkState.PENDING for c in never_started)
    assert_unpublished(rig.services, "slow_orders", run)
    assert rig.services.ledger.get_run(run.id).state is RunState.CANCELLED

    again = _etl(rig.settings, "cancel", run.id)
    assert again.returncode == 0  # cancelling a cancelled run is not an error
    refused = _etl(rig.settings, "cancel", str(uuid.uuid4()))
    assert refused.returncode == 1 and "no run with id" in refused.stderr


def test_losing_the_result_backend_mid_run_never_loses_the_run(rig: FaultRig) -> None:
    rig.start_worker(concurrency=2)
    run = rig.start("slow_orders", 2_500)
    wait_until(
        lambda: rig.services.ledger.chunk_counts(run.id)[ChunkState.DONE] >= 2,
        timeout_s=60,
        what="two chunks done",
    )

    # Everything on the result backend is gone. The database is this session's own
    # (fault_redis_url).
    redis.Redis.from_url(rig.settings.result_backend).flushdb()

    # Nothing of a run is kept there (no chord: the ledger tells the last chunk that the
    # run is complete), so it commits by itself, without the reconciler.
    assert_succeeds(rig.services, run.id, timeout_s=120)


def test_a_run_on_quorum_queues_completes(rig: FaultRig, tmp_path: Path) -> None:
    with scratch_vhost(f"{rig.vhost}-quorum") as vhost:
        broker = rig.settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}"
        quorum = rig.settings.model_copy(update={"broker_url": broker, "queue_type": "quorum"})
        worker = ChildProcess.etl(
            ["worker", "--concurrency", "2"], quorum, tmp_path / "quorum-worker.log",
            extra_env={"PYTHONPATH": str(TESTS_DIR), "ETL_TEST_FAULTS_DIR": str(rig.faults_dir)},
        )  # fmt: skip
        try:
            worker.wait_for_log("ready.")
            types = rabbitmqctl("list_queues", "-p", vhost, "name", "type")
            assert f"{TRANSFORM_QUEUE}\tquorum" in types

            run = rig.start("orders_daily", 5_000, app=make_celery(quorum))
            assert_succeeds(rig.services, run.id, timeout_s=120)
        finally:
            worker.stop()
