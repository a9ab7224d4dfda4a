"""A table keyed by UUIDs, run end to end (issue 14): `etl run --wait` against real worker
processes that load tests/key_pipelines.py through ETL_PIPELINE_MODULES, on the row path
and on the COPY path. The output, read back through the manifest, holds every row of the
table exactly once, and `etl status` shows the chunks' UUID ranges."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from key_pipelines import UUID_KEYS, seed_uuid_keys, uuid_keys

from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.runs import ChunkState, RunState

from builders import read_json_lines_gzip
from support import etl_workers, run_etl

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(TESTS_DIR)}
ROWS = 12_000


@pytest.fixture(scope="module")
def key_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"pipeline_modules": "key_pipelines"})


@pytest.fixture(scope="module")
def key_services(
    key_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    built = build_services(key_settings)
    built.parts.ensure_bucket()
    assert seed_uuid_keys(built.source_engine, ROWS) == ROWS
    logs = tmp_path_factory.mktemp("any-key")
    try:
        with etl_workers(key_settings, logs, count=2, extra_env=ENV, concurrency=2):
            yield built
    finally:
        UUID_KEYS.drop(built.source_engine, checkfirst=True)
        built.close()


@pytest.mark.parametrize("pipeline", ["uuid_keys", "uuid_keys_columnar"])
def test_a_uuid_keyed_table_runs_end_to_end_with_every_row_once(
    key_services: Services, key_settings: Settings, pipeline: str
) -> None:
    ran = run_etl(
        key_settings, "run", pipeline, "--param", "chunk_size=1500", "--wait",
        "--timeout", "120", **ENV,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = re.search(r"run ([0-9a-f-]{36}) started", ran.stdout)
    assert found is not None, ran.stdout
    run = key_services.ledger.get_run(found.group(1))
    assert run.state is RunState.SUCCEEDED, run.reason

    manifest = json.loads(key_services.parts.get_bytes(run.manifest_key or ""))
    records = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(key_services.parts.get_bytes(part["key"]))
    ]
    numbers = [record["row_no"] for record in records]
    assert len(numbers) == len(set(numbers)) == ROWS, "a row read twice or not at all"
    assert sorted(numbers) == list(range(ROWS))
    assert {record["key"] for record in records} == {str(key) for key in uuid_keys(ROWS)}
    assert manifest["total_rows"] == ROWS == run.rows_written

    chunks = key_services.ledger.get_chunks(run.id)
    ordered = sorted(str(key) for key in uuid_keys(ROWS))
    assert [chunk.key_lo for chunk in chunks] == ordered[::1500]  # 8 chunks of 1,500 rows
    assert all(c.state is ChunkState.DONE and c.rows == 1500 for c in chunks)
    assert manifest["window"]["key_min"] == ordered[0]
    assert manifest["window"]["key_max"] == ordered[-1]

    status = run_etl(key_settings, "status", run.id, **ENV)
    assert status.returncode == 0, status.stderr
    assert f"[{ordered[0]},{ordered[1500]})" in status.stdout
    assert f"[{ordered[-1500]},{ordered[-1]}]" in status.stdout  # the last, closed
