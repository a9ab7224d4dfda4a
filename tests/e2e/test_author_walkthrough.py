"""A new author's pipeline, exactly as docs/pipelines.md and the README write it (issue
15): the module is taken from the documents' own code blocks into a directory of its own,
found through ETL_PIPELINE_PATH (no PYTHONPATH), previewed, checked, tested as the page
says, run on RabbitMQ by a real worker, and its output read back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text

from etl.adapters.db import replace_table
from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.runs import RunState

from builders import read_json_lines_gzip
from support import etl_workers, run_etl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOUR = "2026-11-22T14:00:00+01:00"  # 13:00 to 14:00 UTC
EVENTS = Table(
    "events",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("payload", Text),
)


def python_blocks(document: Path) -> list[str]:
    """The ```python blocks of a Markdown document, in order."""
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.S)


def block_with(document: Path, marker: str) -> str:
    [block] = [block for block in python_blocks(document) if marker in block]
    return block


def events_rows() -> list[tuple[int, datetime, str | None]]:
    """Every 10 minutes from 12:00 to 15:00 UTC on 22 November; event 9 has no payload."""
    start = datetime(2026, 11, 22, 12, tzinfo=UTC)
    events = [(i, start + timedelta(minutes=10 * i), f" event {i} ") for i in range(18)]
    return [(i, at, None if i == 9 else payload) for i, at, payload in events]


IN_THE_HOUR = [i for i in range(6, 12)]  # 13:00 <= t < 14:00


@pytest.fixture(scope="module")
def events(service_settings: Settings) -> Iterator[Services]:
    built = build_services(service_settings)
    built.parts.ensure_bucket()
    replace_table(built.source_engine, EVENTS, events_rows())
    try:
        yield built
    finally:
        EVENTS.drop(built.source_engine, checkfirst=True)
        built.close()


def author_settings(settings: Settings, directory: Path, module: str) -> Settings:
    return settings.model_copy(update={"pipeline_path": str(directory), "pipeline_modules": module})


def test_the_readme_example_previews_its_hour(
    events: Services, service_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "events_pipelines.py").write_text(block_with(ROOT / "README.md", "PIPELINES ="))
    settings = author_settings(service_settings, tmp_path, "events_pipelines")

    shown = run_etl(settings, "preview", "events_hourly", "--interval", HOUR, "--json")

    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert [record["id"] for record in document["records"]] == [i for i in IN_THE_HOUR if i != 9]
    assert document["rejections"] == [{"key": 9, "reason": "empty_payload"}]


def test_the_pipelines_page_walkthrough_from_writing_to_reading_the_output(
    events: Services, service_settings: Settings, tmp_path: Path
) -> None:
    page = ROOT / "docs" / "pipelines.md"
    (tmp_path / "events_pipelines.py").write_text(block_with(page, "PIPELINES ="))
    settings = author_settings(service_settings, tmp_path, "events_pipelines")

    # 2. Try it: registered, and previewed for an hour.
    listed = run_etl(settings, "pipelines")
    assert listed.returncode == 0 and "events_hourly" in listed.stdout, listed.stderr
    shown = run_etl(settings, "preview", "events_hourly", "--interval", HOUR, "--limit", "20")
    assert shown.returncode == 0, shown.stderr
    assert "6 read of 6 a run would read now; 5 records, 1 rejected" in shown.stdout
    assert "9  empty_payload" in shown.stdout

    # 3. Test it: the page's test, as written, against the module.
    namespace: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(tmp_path))
        exec(block_with(page, "def test_"), namespace)
        [test] = [value for name, value in namespace.items() if name.startswith("test_")]
        test()

    # 4. Deploy it: a worker started (it declares the queues), checked, run, read back.
    with etl_workers(settings, tmp_path, count=1) as [worker]:
        checked = run_etl(settings, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        ran = run_etl(settings, "run", "events_hourly", "--interval", HOUR, "--wait")
        assert "etl worker: pipelines events_hourly, orders_daily" in worker.log()
    assert ran.returncode == 0, ran.stdout + ran.stderr
    run_id = re.search(r"run ([0-9a-f-]{36}) started", ran.stdout)
    assert run_id is not None, ran.stdout
    run = events.ledger.get_run(run_id.group(1))
    assert run.state is RunState.SUCCEEDED, run.reason
    assert (run.rows_written, run.rows_rejected) == (5, 1)
    shown_output = run_etl(settings, "outputs", "show", "latest", "--pipeline", "events_hourly")
    assert shown_output.returncode == 0, shown_output.stderr
    assert run.id in shown_output.stdout
    manifest = json.loads(events.parts.get_bytes(run.manifest_key or ""))
    assert manifest["partition"] == "dt=2026-11-22/hour=13"
    records = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(events.parts.get_bytes(part["key"]))
    ]
    assert [record["id"] for record in records] == [i for i in IN_THE_HOUR if i != 9]
    assert records[0] == {
        "id": 6,
        "occurred_at": "2026-11-22T13:00:00Z",
        "payload": "event 6",
    }
