"""``etl demo``: seed a sample table, run ``orders_daily`` once, print what happened.

With RabbitMQ, PostgreSQL and Redis reachable at the configured URLs, the demo uses them
and starts its own worker process. Otherwise it says so and runs embedded: SQLite, an
in-process broker and worker, and moto in-process for S3.

Either way its ledger and sample orders are its own (a database it creates on the
configured server and drops at the end, or a SQLite file it removes): its outputs go
to an S3 that lives only as long as the demo (unless ETL_S3_ENDPOINT_URL names one), so
its runs must not stay in the configured ledger, where `etl outputs` and `etl status`
would show runs nobody can read.
"""

from __future__ import annotations

import os

# bandit: starts our own worker, never a shell
import subprocess  # nosec B404
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from etl.adapters.db import redact_url
from etl.adapters.probe import broker_problem, database_problem, result_backend_problem
from etl.adapters.s3 import LocalS3, in_process_s3
from etl.adapters.sample_orders import seed_orders
from etl.adapters.scratch_database import scratch_database
from etl.bootstrap import build_services
from etl.config import Settings, settings_env
from etl.domain.runs import Run
from etl.service.lifecycle import wait_for_run
from etl.worker.app import (
    EMBEDDED_BROKER_URL,
    EMBEDDED_RESULT_BACKEND,
    EtlCelery,
    celery_enqueue,
    make_celery,
)
from etl.worker.embedded import in_process_worker

DEMO_PIPELINE = "orders_daily"


class DemoWorkerFailed(RuntimeError):
    """The demo's worker process did not start."""


@dataclass(frozen=True)
class DemoOutcome:
    """What the demo did, for the summary."""

    mode: str
    ledger: str  # where the run was recorded, and what became of it
    run: Run
    parts: int
    part_bytes: int
    seed_rows: int
    wall_s: float
    manifest_uri: str
    outputs_kept: bool  # False: the outputs were in an S3 of the demo's own, now gone


def unreachable_services(settings: Settings) -> dict[str, str]:
    """The configured services that do not answer, with the reason."""
    checks = {
        f"RabbitMQ at {redact_url(settings.broker_url)}": broker_problem(
            settings.broker_url, ssl=settings.broker_use_ssl
        ),
        f"PostgreSQL at {redact_url(settings.database_url)}": database_problem(
            settings.database_url
        ),
        f"Redis at {redact_url(settings.result_backend)}": result_backend_problem(
            settings.result_backend
        ),
    }
    return {name: problem for name, problem in checks.items() if problem}


def run_demo(
    settings: Settings,
    rows: int,
    *,
    embedded: bool | None = None,
    say: Callable[[str], None] = print,
) -> DemoOutcome:
    """Run the demo; ``embedded=None`` chooses by whether the services are reachable."""
    if embedded is None:
        down = unreachable_services(settings)
        embedded = bool(down)
        if down:
            name, problem = next(iter(down.items()))
            say(
                f"{name} is unreachable ({problem}); running embedded: "
                "SQLite, in-process broker and worker, moto."
            )
    # moto accepts any credentials, but boto3 refuses to sign a request with none.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    with ExitStack() as stack:
        ledger = ""
        if not embedded:
            try:
                settings, ledger = stack.enter_context(_own_ledger(settings))
            except Exception as exc:
                say(
                    f"cannot create a database of the demo's own at "
                    f"{redact_url(settings.database_url)} ({_first_line(exc)}); running "
                    "embedded: SQLite, in-process broker and worker, moto."
                )
                embedded = True
        outputs_kept = not embedded and bool(settings.s3_endpoint_url)
        if embedded:
            settings = stack.enter_context(_embedded(settings))
            mode = "embedded (SQLite, in-process broker and worker, moto)"
            ledger = "SQLite in a temporary directory (removed at the end)"
        else:
            if not settings.s3_endpoint_url:
                local_s3 = stack.enter_context(LocalS3())
                settings = settings.model_copy(update={"s3_endpoint_url": local_s3.endpoint_url})
            mode = (
                "services (RabbitMQ, PostgreSQL, Redis; S3 at "
                + (settings.s3_endpoint_url or "AWS")
                + ")"
            )
        # One Celery app sends and consumes: the embedded broker lives in this process.
        app = make_celery(settings)
        services = build_services(settings, enqueue=celery_enqueue(app))
        stack.callback(services.close)
        services.parts.ensure_bucket()
        say(f"seeding {rows:,} orders ...")
        seeded = seed_orders(services.source_engine, rows)
        still_working = stack.enter_context(_worker(app, settings, embedded))
        say(f"running {DEMO_PIPELINE} ({mode}) ...")
        started = time.monotonic()
        run, _ = services.runs.start_run(DEMO_PIPELINE)
        final = wait_for_run(services.ledger, run.id, timeout_s=600, still_working=still_working)
        wall = time.monotonic() - started
        chunks = services.ledger.get_chunks(final.id)
        return DemoOutcome(
            mode=mode,
            ledger=ledger,
            run=final,
            parts=sum(1 for chunk in chunks if chunk.s3_key),
            part_bytes=sum(chunk.bytes or 0 for chunk in chunks),
            seed_rows=seeded,
            wall_s=wall,
            manifest_uri=(
                f"s3://{services.parts.bucket}/{final.manifest_key}" if final.manifest_key else ""
            ),
            outputs_kept=outputs_kept,
        )


@contextmanager
def _own_ledger(settings: Settings) -> Iterator[tuple[Settings, str]]:
    """Settings whose ledger and source are a database of the demo's own (a SQLite file
    when the configured ledger is SQLite), and a line saying so; gone on exit."""
    if settings.database_url.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="etl-demo-") as tmp:
            update = {"database_url": f"sqlite:///{tmp}/etl.db", "source_database_url": ""}
            yield settings.model_copy(update=update), f"SQLite in {tmp} (removed at the end)"
        return
    with scratch_database(
        settings.database_url, "etl_demo", settings.database_ssl_args
    ) as database_url:
        update = {"database_url": database_url, "source_database_url": ""}
        where = f"{redact_url(database_url)} (the demo's own database, dropped at the end)"
        yield settings.model_copy(update=update), where


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _embedded(settings: Settings) -> Iterator[Settings]:
    with tempfile.TemporaryDirectory(prefix="etl-demo-") as tmp, in_process_s3():
        yield settings.model_copy(
            update={
                "broker_url": EMBEDDED_BROKER_URL,
                "result_backend": EMBEDDED_RESULT_BACKEND,
                "database_url": f"sqlite:///{tmp}/etl.db",
                "source_database_url": "",
                "s3_endpoint_url": "",
            }
        )


@contextmanager
def _worker(
    app: EtlCelery, settings: Settings, embedded: bool
) -> Iterator[Callable[[], str | None]]:
    """A worker for the demo's run; yields a check that it is still alive."""
    if embedded:
        with in_process_worker(app, concurrency=2):
            yield lambda: None
        return
    log = tempfile.NamedTemporaryFile(prefix="etl-demo-worker-", suffix=".log", delete=False)  # noqa: SIM115
    # bandit: our own command, fixed arguments
    process = subprocess.Popen(  # nosec B603
        [sys.executable, "-m", "etl", "worker", "--concurrency", "2"],
        env={**os.environ, **settings_env(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def still_working() -> str | None:
        if process.poll() is None:
            return None
        return f"the worker exited with status {process.returncode}; its log is {log.name}"

    try:
        # The clock starts at the trigger, not while the worker boots.
        deadline = time.monotonic() + 60
        while b"ready." not in Path(log.name).read_bytes():
            problem = still_working()
            if problem is not None or time.monotonic() > deadline:
                raise DemoWorkerFailed(problem or f"the worker did not start; see {log.name}")
            time.sleep(0.1)
        yield still_working
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
