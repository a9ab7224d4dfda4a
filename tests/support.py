"""Checks shared by the integration and e2e suites."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from etl.bootstrap import Services
from etl.config import Settings, settings_env
from etl.domain.encoding import read_part
from etl.domain.layout import run_prefix, success_key
from etl.domain.runs import Run
from etl.pipelines import get_pipeline
from etl.pipelines.orders import transform_orders

IN_CI = os.environ.get("CI", "").lower() == "true"
SESSION_TAG = uuid.uuid4().hex[:8]

POSTGRES_ADMIN_URL = os.environ.get(
    "ETL_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("ETL_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
API_TOKEN = "test-token-" + SESSION_TAG


def require_service(name: str, problem: str | None) -> None:
    """Skip (locally) or fail (in CI) when a service the test needs is unreachable."""
    if problem is None:
        return
    message = f"{name} is unreachable: {problem}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl and return its output; raises CalledProcessError on failure."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@contextmanager
def scratch_vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of a test's own, open to guest, deleted afterwards even on failure."""
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


class RecordingEnqueue:
    """The Enqueue port for tests: remembers what would have been sent, or fails like a
    broker that refuses the publish when ``error`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.error: Exception | None = None

    def __call__(self, name: str, args: list[Any]) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((name, args))


def expected_records(services: Services, pipeline_name: str) -> tuple[list[dict[str, Any]], int]:
    """The transform applied to the whole source: (records, rejected count). The fault
    pipelines of fault_pipelines.py share the orders transform, faults aside."""
    pipeline = get_pipeline(pipeline_name)
    transform = transform_orders if pipeline.source.table == "orders" else pipeline.transform
    columns = ", ".join(pipeline.source.columns)
    source = pipeline.source
    query = text(f"SELECT {columns} FROM {source.table} ORDER BY {source.key_column}")
    with services.source_engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    result = transform(rows)
    return result.records, len(result.rejections)


def assert_run_output_matches_source(services: Services, run: Run) -> dict[str, Any]:
    """Download every part through the manifest and compare the rows, in full, with the
    transformed source: same ids, no duplicates, none missing. Returns the manifest."""
    assert run.manifest_key, f"run {run.id} has no manifest ({run.state}: {run.reason})"
    manifest = json.loads(services.parts.get_bytes(run.manifest_key))
    pipeline = get_pipeline(run.pipeline)
    prefix = run_prefix(services.settings.s3_prefix, pipeline.output_path, run.logical_date, run.id)
    assert services.parts.part_metadata(success_key(prefix)) is not None, "_SUCCESS is missing"
    assert manifest["run_id"] == run.id and manifest["pipeline"] == run.pipeline

    found: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        data = services.parts.get_bytes(part["key"])
        assert hashlib.sha256(data).hexdigest() == part["sha256"], (
            f"sha256 differs for {part['key']}"
        )
        assert len(data) == part["bytes"]
        schema = [(c["name"], c["type"]) for c in manifest["schema"]]
        records = list(read_part(data, manifest["format"], schema))
        assert len(records) == part["rows"]
        found.extend(records)

    expected, rejected = expected_records(services, run.pipeline)
    ids = [record["order_id"] for record in found]
    # The figures, for `pytest -rP` (and a failure's captured output).
    print(
        f"rows of {run.pipeline} run {run.id}: {len(expected)} expected, {len(ids)} found "
        f"({len(ids) - len(set(ids))} duplicates) in {len(manifest['parts'])} parts; "
        f"{rejected} rejected"
    )
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate rows in the output"
    missing = {r["order_id"] for r in expected} - set(ids)
    assert not missing, f"{len(missing)} rows missing, e.g. {sorted(missing)[:5]}"
    assert sorted(found, key=lambda r: r["order_id"]) == expected
    assert manifest["total_rows"] == len(expected) == run.rows_written
    assert manifest["rejected_rows"] == rejected == run.rows_rejected
    # Only the parts the manifest names live under the run's prefix, besides its markers.
    listed = set(services.parts.list_keys(prefix + "/"))
    assert listed == {p["key"] for p in manifest["parts"]} | {run.manifest_key, success_key(prefix)}
    return manifest


def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, what: str, poll_s: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


class ChildProcess:
    """A subprocess of ours in its own process group, its output in a log file, always
    stopped (group and all) at the end of the test."""

    def __init__(
        self,
        argv: list[str],
        settings: Settings,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, **settings_env(settings), **(extra_env or {})}
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @classmethod
    def etl(
        cls, args: list[str], settings: Settings, log_path: Path, **kwargs: Any
    ) -> ChildProcess:
        """``python -m etl <args>``."""
        return cls([sys.executable, "-m", "etl", *args], settings, log_path, **kwargs)

    def alive(self) -> bool:
        """Still running."""
        return self.process.poll() is None

    def wait_for_log(self, text: str, *, timeout_s: float = 60) -> None:
        """Wait until the process has printed ``text``; fail with its log if it died first."""
        wait_until(
            lambda: text in self.log() or not self.alive(), timeout_s=timeout_s, what=repr(text)
        )
        assert self.alive(), self.log()

    def log(self) -> str:
        """What it has printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the group (a warm shutdown for a Celery worker), then SIGKILL."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
