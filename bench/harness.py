"""What the interval benchmarks share: a scratch vhost and database of their own (removed
at the end), moto's S3 server in a subprocess, and `etl` subprocesses logging to files.

Only the local services are used (PostgreSQL, RabbitMQ with rabbitmqctl, Redis), as
configured by the usual ETL_* variables; the vhost and database names carry the pid.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from etl.config import Settings, load_settings, settings_env
from etl.domain.transform import BatchResult, Record, Row, map_rows

ROOT = Path(__file__).resolve().parents[1]


def _as_record(row: Row) -> Record:
    return {**row, "event_at": row["event_at"].isoformat()}


def pass_through(rows: Sequence[Row]) -> BatchResult:
    """The benchmarks' transform: rows (id, event_at, ...) pass through as they are."""
    return map_rows(rows, "id", _as_record)


# Lines of a worker's or Beat's log worth a look after a run.
PROBLEM = re.compile(r"ERROR|CRITICAL|Traceback|'created': False")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def scratch_services(name: str, pipeline_module: str) -> Iterator[Settings]:
    """Settings on a vhost, a database and a moto S3 of their own, with the pipelines
    of ``pipeline_module``; all three removed at the end, even on failure."""
    base = load_settings()
    scratch = f"{name}_{os.getpid()}"
    admin = create_engine(base.database_url, isolation_level="AUTOCOMMIT")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # moto takes any credentials
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    rabbitmqctl("add_vhost", scratch)
    try:
        rabbitmqctl("set_permissions", "-p", scratch, "guest", ".*", ".*", ".*")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{scratch}"'))
        try:
            with moto_s3() as endpoint:
                parts = urlsplit(base.broker_url)
                yield base.model_copy(
                    update={
                        "broker_url": f"{parts.scheme}://{parts.netloc}/{scratch}",
                        "database_url": make_url(base.database_url)
                        .set(database=scratch)
                        .render_as_string(hide_password=False),
                        "source_database_url": "",
                        "s3_endpoint_url": endpoint,
                        "s3_bucket": "etl-bench",
                        "pipeline_modules": pipeline_module,
                    }
                )
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
    finally:
        admin.dispose()
        rabbitmqctl("delete_vhost", scratch)


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server in a process of its own on a free loopback port (its URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


class Etl:
    """``python -m etl <args>`` in a process group of its own, its output in ``log``."""

    def __init__(self, args: list[str], settings: Settings, log: Path) -> None:
        self.log_path = log
        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "etl", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        """The first match of ``pattern`` in the log; fails if the process ends first."""
        deadline = time.monotonic() + timeout_s
        while not (found := re.search(pattern, self.log())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {pattern!r} in {self.log_path}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        return found

    def stop(self) -> None:
        """SIGTERM the group (a warm shutdown), then SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def problems(self) -> list[str]:
        """Log lines that say something went wrong."""
        return [line for line in self.log().splitlines() if PROBLEM.search(line)]


@contextmanager
def workers(settings: Settings, log_dir: Path, count: int) -> Iterator[list[Etl]]:
    """``count`` `etl worker --concurrency 1` processes, ready on entry, stopped on exit."""
    started = [
        Etl(["worker", "--concurrency", "1"], settings, log_dir / f"worker-{n}.log")
        for n in range(count)
    ]
    try:
        for worker in started:
            worker.wait_for_log(r"ready\.")
        yield started
    finally:
        for worker in started:
            worker.stop()
