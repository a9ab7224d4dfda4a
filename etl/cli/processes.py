"""``etl worker``, ``etl beat``, ``etl api``, ``etl db``, ``etl seed``, ``etl demo``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any, NoReturn

from etl.cli.common import (
    DATABASE_FIX,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    as_document,
    first_line,
    migrate_ledger,
    positive,
)
from etl.cli.display import add_json_flag, print_json
from etl.config import Settings
from etl.domain.runs import RunState

# A worker started with (or just before) its broker waits this long for it, as Celery
# itself would, before it gives up with one line.
BROKER_WAIT_S = 60.0

# `etl api`'s gunicorn (docs/security.md, "Connections that do not finish"): with 32
# half-open connections held, /healthz did not answer within 90 s on 2 sync workers
# (the old default) nor within 40 s on 2 x 16 gthread threads; on 2 gevent workers it
# answered within 14 ms, and within 126 ms with 512 of them.
API_WORKER_CLASSES = ("gevent", "gthread")
API_THREADS = 64
API_GUNICORN_OPTIONS = (
    # gevent: connections per worker; gthread: connections open at once per worker
    "--worker-connections", "1000",
    # A request's line and headers must arrive within this (gevent: a timeout around
    # reading them; gthread: a kept-alive or never-written connection is closed).
    "--keep-alive", "5",
    # A worker that does not check in for this long (a blocked event loop) is replaced,
    # and a stopping one has this long to finish its requests.
    "--timeout", "20",
    "--graceful-timeout", "10",
    # gunicornc's socket: unused, and shared by every gunicorn of a user on one host.
    "--no-control-socket",
)  # fmt: skip
DEFAULT_QUEUES = "etl.plan,etl.transform,etl.commit"


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    worker = sub.add_parser("worker", help="start a Celery worker")
    worker.add_argument(
        "--queues",
        default=DEFAULT_QUEUES,
        help=f"comma-separated queues to consume (default {DEFAULT_QUEUES})",
    )
    worker.add_argument(
        "--concurrency",
        type=positive,
        help="worker processes (default ETL_WORKER_CONCURRENCY, which defaults to 2)",
    )
    worker.add_argument(
        "--hostname", help="Celery node name (default etl-<pid>@<host>, unique per process)"
    )
    worker.add_argument(
        "--broker-wait",
        type=float,
        default=BROKER_WAIT_S,
        metavar="SECONDS",
        help=f"how long to wait for RabbitMQ at start-up (default {BROKER_WAIT_S:g})",
    )
    worker.add_argument(
        "--events",
        action=argparse.BooleanOptionalAction,
        help="send Celery task events, for Flower: each task's progress, and the tasks this "
        "worker sends (default ETL_WORKER_EVENTS, off)",
    )
    worker.set_defaults(handler=cmd_worker)

    beat = sub.add_parser("beat", help="start Celery Beat with the pipelines' schedules")
    beat.set_defaults(handler=cmd_beat)

    api = sub.add_parser("api", help="serve the HTTP API with gunicorn")
    api.add_argument(
        "--bind",
        default="127.0.0.1:8000",
        metavar="HOST:PORT",
        help="the address gunicorn listens on (default 127.0.0.1:8000: this host only)",
    )
    api.add_argument(
        "--workers", type=positive, default=2, help="gunicorn worker processes (default 2)"
    )
    api.add_argument(
        "--worker-class",
        choices=API_WORKER_CLASSES,
        default="gevent",
        help="gunicorn's workers: gevent (default; a connection costs a greenlet, so "
        "half-open ones cannot stall the API) or gthread (a thread per busy connection, "
        "for pipeline modules that do not run under gevent)",
    )
    api.add_argument(
        "--threads",
        type=positive,
        default=API_THREADS,
        help=f"threads per worker with --worker-class gthread (default {API_THREADS})",
    )
    api.set_defaults(handler=cmd_api)

    db = sub.add_parser("db", help="ledger schema")
    db.add_argument(
        "action", choices=["upgrade"], help="upgrade: create the ledger's tables or migrate them"
    )
    add_json_flag(db)
    db.set_defaults(handler=cmd_db)

    seed = sub.add_parser("seed", help="create and fill the sample orders table")
    seed.add_argument(
        "--rows", type=positive, default=100_000, help="how many orders (default 100,000)"
    )
    add_json_flag(seed)
    seed.set_defaults(handler=cmd_seed)

    demo = sub.add_parser("demo", help="seed, run orders_daily once and print a summary")
    demo.add_argument(
        "--rows", type=positive, default=100_000, help="how many orders to seed (default 100,000)"
    )
    demo.add_argument(
        "--embedded", action="store_true", help="use the embedded mode even if services are up"
    )
    add_json_flag(demo)
    demo.set_defaults(handler=cmd_demo)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from etl.logs import install_celery_hooks
    from etl.worker.app import announce_pipelines_at_start, make_celery

    if settings.metrics_port:
        # Before any metric exists: every pool process then writes its own files here,
        # and the main process serves their sum.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="etl-metrics-")
        from etl.metrics import serve_worker_metrics

        serve_worker_metrics(settings.metrics_port, str(settings.metrics_bind))
    # Its pipelines load and its bucket exists, or it does not start: a worker that
    # cannot write its outputs would only fail every chunk into the dead-letter queues.
    refuse_to_start("the worker", settings)
    # Migrate the ledger and declare the queues (with their DLQs) before consuming, so
    # a message rejected in the first second still has somewhere to go.
    migrate_ledger(settings)
    _declare_topology_when_up(settings, args.broker_wait)
    refuse_to_start("the worker", settings, bucket=True)
    app = make_celery(settings)
    events = worker_events(args, settings)
    if events:
        # Sent by this worker only: the API's and Beat's broker users may not publish
        # to Celery's event exchange (docs/operations.md).
        app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    install_celery_hooks(settings.log_format, "worker")
    announce_pipelines_at_start()
    logging.captureWarnings(settings.log_format == "json")
    app.worker_main(celery_worker_argv(args, settings, events=events))
    return EXIT_OK


def worker_events(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether the worker sends task events: ``--events``/``--no-events``, else
    ETL_WORKER_EVENTS."""
    return settings.worker_events if args.events is None else bool(args.events)


def celery_worker_argv(args: argparse.Namespace, settings: Settings, *, events: bool) -> list[str]:
    """The arguments ``etl worker`` hands to Celery's worker."""
    concurrency = args.concurrency or settings.worker_concurrency
    # Two workers on one host must not share a node name: they would fight over the
    # same remote-control queue and the second would exit.
    hostname = args.hostname or f"etl-{os.getpid()}@%h"
    # In JSON mode every line is an event: no banner, and Python's warnings are logged.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    return [
        *quiet,
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={concurrency}",
        f"--queues={args.queues}",
        f"--hostname={hostname}",
        *(["--task-events"] if events else []),
    ]


def refuse_to_start(process: str, settings: Settings, *, bucket: bool = False) -> None:
    """The fatal checks at start (etl/service/checks.py), each ending the start in one
    line with the fix: a pipeline module that does not load (exit 2; the modules are
    loaded), or with ``bucket``, for a process that needs it (workers write it, the API
    reports on it), a bucket that does not exist (exit 1)."""
    from etl.adapters.probe import SettingsProbes
    from etl.service.checks import bucket_refusal, check_pipelines

    if bucket:
        refusal = bucket_refusal(SettingsProbes(settings))
    else:
        refusal = check_pipelines(settings.pipeline_modules, settings.pipeline_path)
    if refusal is not None and not refusal.ok:
        status = EXIT_USAGE if refusal.name == "pipelines" else EXIT_FAILED
        raise CliError(f"not starting {process}: {refusal.sentence()}", status)


def _declare_topology_when_up(settings: Settings, wait_s: float) -> None:
    """Declare the queues, retrying while the broker is not reachable yet (backing off to
    10 s) for ``wait_s``; then, or on any other refusal, one line naming the problem."""
    from etl.adapters.db import redact_url
    from etl.adapters.errors import BROKER_UNREACHABLE
    from etl.adapters.topology import declare_topology

    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            declare_topology(
                settings.broker_url,
                settings.queue_type,
                settings.delivery_limit,
                ssl=settings.broker_use_ssl,
            )
            return
        except BROKER_UNREACHABLE as exc:
            where = redact_url(settings.broker_url)
            if time.monotonic() + delay > deadline:
                raise CliError(f"cannot reach RabbitMQ at {where}: {first_line(exc)}") from None
            logging.getLogger(__name__).warning(
                "RabbitMQ at %s is not reachable (%s); trying again in %.0f s",
                where,
                first_line(exc),
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        except Exception as exc:  # a queue declared with other arguments, a refused user
            raise CliError(f"cannot declare the queues: {first_line(exc)}") from None


def cmd_beat(args: argparse.Namespace, settings: Settings) -> NoReturn:
    # Beat is its own entry point (beat/); the CLI hands the process over to it.
    # bandit: our own module
    os.execv(sys.executable, [sys.executable, "-m", "beat"])  # nosec B606


def cmd_api(args: argparse.Namespace, settings: Settings) -> NoReturn:
    if not settings.api_token.get_secret_value():
        raise CliError(
            "ETL_API_TOKEN is not set: the API refuses to run without authentication", EXIT_USAGE
        )
    refuse_to_start("the API", settings)
    refuse_to_start("the API", settings, bucket=True)
    migrate_ledger(settings)  # once, before gunicorn forks: its workers do not migrate
    logging_args = []
    if settings.log_format == "json":
        # gunicorn's own and access loggers, one JSON event per line like the app's.
        config = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
        with config:
            json.dump(gunicorn_json_logging(), config)
        logging_args = ["--log-config-json", config.name]
    # bandit: gunicorn with fixed arguments
    os.execv(  # nosec B606
        sys.executable,
        [
            sys.executable, "-m", "gunicorn",
            "--bind", args.bind,
            "--workers", str(args.workers),
            "--worker-class", args.worker_class,
            *(["--threads", str(args.threads)] if args.worker_class == "gthread" else []),
            *API_GUNICORN_OPTIONS,
            "--access-logfile", "-",
            # The access log never carries the Authorization header, and the query's
            # values (but the API's own fields) are masked: a token sent there is not kept.
            "--access-logformat", '%(h)s "%(r)s" %(s)s %(b)s %(L)ss',
            "--logger-class", "etl.access_log.RedactingLogger",
            *logging_args,
            "api:wsgi_app()",
        ],
    )  # fmt: skip


def gunicorn_json_logging() -> dict[str, Any]:
    """A logging dictConfig for gunicorn's error and access loggers, in JSON."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "etl.logs.JsonFormatter", "service": "api"}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "gunicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from etl.adapters.db import redact_url

    version = migrate_ledger(settings)
    where = redact_url(settings.database_url)
    if args.json:
        print_json({"ledger": where, "schema_version": version})
    else:
        print(f"ledger at {where} is at schema version {version}")
    return EXIT_OK


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from etl.adapters.db import make_engine, redact_url
    from etl.adapters.sample_orders import seed_orders

    engine = make_engine(
        settings.effective_source_database_url, ssl_args=settings.database_ssl_args
    )
    where = redact_url(settings.effective_source_database_url)
    try:
        seeded = seed_orders(engine, args.rows)
    except Exception as exc:
        problem = f"{first_line(exc)}; {DATABASE_FIX}"
        raise CliError(f"cannot seed orders at {where}: {problem}") from None
    finally:
        engine.dispose()
    if args.json:
        print_json({"table": "orders", "rows": seeded, "database": where})
    else:
        print(f"seeded {seeded:,} rows into orders at {where}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from etl.demo import DemoWorkerFailed, run_demo

    def say(text: str) -> None:  # with --json, stdout holds only the document
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        outcome = run_demo(settings, args.rows, embedded=True if args.embedded else None, say=say)
    except DemoWorkerFailed as exc:
        raise CliError(str(exc)) from None
    run = outcome.run
    rows_read = (run.rows_written or 0) + (run.rows_rejected or 0)
    rate = rows_read / outcome.wall_s if outcome.wall_s else 0.0
    if args.json:
        print_json(
            {
                "mode": outcome.mode,
                "ledger": outcome.ledger,
                "run": as_document(run),
                "rows_seeded": outcome.seed_rows,
                "rows_read": rows_read,
                "parts": outcome.parts,
                "part_bytes": outcome.part_bytes,
                "manifest_uri": outcome.manifest_uri or None,
                "outputs_kept": outcome.outputs_kept,
                "wall_s": round(outcome.wall_s, 3),
                "rows_per_s": round(rate),
            }
        )
        return EXIT_OK if run.state is RunState.SUCCEEDED else EXIT_FAILED
    gone = "" if outcome.outputs_kept else " (in the demo's own S3: gone with it)"
    print()
    print(f"mode      {outcome.mode}")
    print(f"ledger    {outcome.ledger}")
    print(f"run       {run.id}  {run.pipeline}  dt={run.logical_date}  {run.state}")
    if run.reason:
        print(f"reason    {run.reason}")
    print(
        f"rows      {rows_read:,} read of {outcome.seed_rows:,} seeded; "
        f"{run.rows_written or 0:,} written, {run.rows_rejected or 0:,} rejected"
    )
    print(f"parts     {outcome.parts:,} ({outcome.part_bytes / 1e6:,.1f} MB jsonl.gz)")
    print(f"manifest  {outcome.manifest_uri or '(none)'}{gone if outcome.manifest_uri else ''}")
    print(f"wall      {outcome.wall_s:,.1f} s trigger to commit ({rate:,.0f} rows/s)")
    return EXIT_OK if run.state is RunState.SUCCEEDED else EXIT_FAILED
