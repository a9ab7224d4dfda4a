"""Every output format end to end: a real worker writes the parts, and every row is
read back through the manifest and compared with the transformed source; the reader
and `etl outputs verify` read every format."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services, build_run_reader, build_services
from etl.config import Settings, settings_env
from etl.domain.runs import RunState
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import celery_enqueue, make_celery

from support import ChildProcess, assert_run_output_matches_source

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(TESTS_DIR)}


@pytest.fixture(scope="module")
def format_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"pipeline_modules": "format_pipelines"})


@pytest.fixture(scope="module")
def format_services(
    format_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    built = build_services(format_settings)
    built.parts.ensure_bucket()
    seed_orders(built.source_engine, 6_000)
    worker = ChildProcess.etl(
        ["worker", "--concurrency", "2"], format_settings,
        tmp_path_factory.mktemp("formats") / "worker.log", extra_env=ENV,
    )  # fmt: skip
    try:
        worker.wait_for_log("ready.")
        yield built
    finally:
        worker.stop()
        built.close()


@pytest.mark.parametrize("pipeline", ["orders_daily", "orders_csv", "orders_parquet"])
def test_every_format_holds_every_row_once(
    format_services: Services, format_settings: Settings, pipeline: str
) -> None:
    service = RunService(format_services.ledger, celery_enqueue(make_celery(format_settings)))
    run, _ = service.start_run(pipeline, interval=date(2024, 6, 1), params={"chunk_size": 1_500})
    final = wait_for_run(format_services.ledger, run.id, timeout_s=120)
    assert final.state is RunState.SUCCEEDED, final.reason

    manifest = assert_run_output_matches_source(format_services, final)
    assert len(manifest["parts"]) == 4
    suffix = {"orders_daily": ".jsonl.gz", "orders_csv": ".csv.gz", "orders_parquet": ".parquet"}
    assert all(part["key"].endswith(suffix[pipeline]) for part in manifest["parts"])

    reader = build_run_reader(format_settings)
    committed = reader.open(reader.find(run.id, [pipeline]))
    assert sum(1 for _ in reader.rows(committed)) == final.rows_written
    verified = subprocess.run(
        [sys.executable, "-m", "etl", "outputs", "verify", run.id],
        env={**os.environ, **settings_env(format_settings), **ENV},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
