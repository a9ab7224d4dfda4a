from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from etl.adapters.db import make_engine
from etl.adapters.ledger import SCHEMA_VERSION, Ledger
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.cli import main
from etl.domain.runs import Trigger
from etl.service import execution as steps

from builders import utc_day

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    monkeypatch.setenv("ETL_DATABASE_URL", url)
    monkeypatch.setenv("ETL_BROKER_URL", CLOSED_BROKER)
    monkeypatch.setenv("ETL_RESULT_BACKEND", "redis://127.0.0.1:1/0")
    return url


def recorded_run_count(url: str) -> int:
    engine = make_engine(url)
    try:
        return len(Ledger(engine).list_runs())
    finally:
        engine.dispose()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("etl: error:")
    assert out == ""
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "orders_daily", "--date", "2026-13-01"], "2026-13-01"),
        (["run", "orders_daily", "--date", "2026-02-30"], "2026-02-30"),
        (["run", "orders_daily", "--date", "2026-W01-1"], "2026-W01-1"),
        (["run", "orders_daily", "--param", "chunk_size"], "chunk_size"),
        (["run", "orders_daily", "--param", "=5"], "=5"),
        (["frobnicate"], "frobnicate"),
        (["runs", "--limit", "0"], "--limit"),
        (["runs", "--limit", "ten"], "ten"),
        (["runs", "--state", "exploded"], "exploded"),
        (["db", "downgrade"], "downgrade"),
        ([], "command"),
    ],
)
def test_usage_errors_exit_2_with_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert main(argv) == 2
    assert named in one_error_line(capsys)


def test_a_bad_setting_exits_2_with_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_DB_POOL_SIZE", "0")
    assert main(["pipelines"]) == 2
    assert "ETL_DB_POOL_SIZE" in one_error_line(capsys)


def test_pipelines_lists_orders_daily_with_its_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipelines"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["PIPELINE", "SCHEDULE", "NEXT", "RUN", "FOR"]
    [line] = [line for line in lines if line.startswith("orders_daily ")]
    assert 'cron "0 2 * * *" UTC' in line
    assert line[header.index("NEXT RUN") :].startswith("20")  # the next slot, in its column
    assert "jsonl.gz" in line


def test_pipelines_json_lists_each_pipeline_with_its_next_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["pipelines", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    [orders] = [entry for entry in listed if entry["name"] == "orders_daily"]
    assert orders["schedule"] == 'cron "0 2 * * *" UTC'
    assert orders["next_run_at"].endswith("T02:00:00+00:00")
    assert (orders["mode"], orders["interval"], orders["output_format"]) == (
        "snapshot",
        "day",
        "jsonl.gz",
    )


def test_db_upgrade_migrates_the_ledger(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["db", "upgrade"]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    assert recorded_run_count(ledger_url) == 0


def test_runs_prints_a_header_and_each_run(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["runs"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines()[0].split()[:2] == ["RUN", "ID"]
    assert len(out.splitlines()) == 1


def test_runs_json_of_an_empty_ledger_is_an_empty_list(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["runs", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_status_of_an_unknown_run_exits_1_naming_it(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["status", "no-such-run-42"]) == 1
    assert "no-such-run-42" in one_error_line(capsys)


def test_run_of_an_unknown_pipeline_exits_2_listing_the_known_ones(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["run", "no_such_pipeline"]) == 2
    line = one_error_line(capsys)
    assert "no_such_pipeline" in line
    assert "orders_daily" in line
    assert recorded_run_count(ledger_url) == 0


@pytest.mark.parametrize("value", ["abc", "", "0"])
def test_run_with_a_bad_parameter_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], ledger_url: str, value: str
) -> None:
    assert main(["run", "orders_daily", "--param", f"chunk_size={value}"]) == 2
    assert "chunk_size" in one_error_line(capsys)
    assert recorded_run_count(ledger_url) == 0


def test_run_with_an_unknown_parameter_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], ledger_url: str
) -> None:
    assert main(["run", "orders_daily", "--param", "shard=3"]) == 2
    assert "shard" in one_error_line(capsys)


def test_a_ledger_that_cannot_be_opened_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", "sqlite:///" + str(tmp_path / "missing" / "l.db"))
    assert main(["runs"]) == 1
    assert "cannot open the ledger" in one_error_line(capsys)


def test_status_shows_a_table_of_chunks_with_state_rows_duration_and_tries(
    services: Services,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_orders(services.source_engine, 1_000)
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 11, 1)),
        logical_date=date(2026, 11, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 500},
    )
    steps.plan_run(services, run.id)
    steps.transform_chunk(services, run.id, 0)  # chunk 1 stays pending
    monkeypatch.setenv("ETL_DATABASE_URL", str(services.ledger.engine.url))

    assert main(["status", run.id]) == 0

    out = capsys.readouterr().out
    assert "chunks    1/2 done" in out
    header, *rows = out[out.index("CHUNK") :].splitlines()
    assert header.split() == [
        "CHUNK",
        "KEYS",
        "STATE",
        "ROWS",
        "REJECTED",
        "SECONDS",
        "TRIES",
        "ERROR",
    ]
    done, pending = (row.split() for row in rows)
    chunk = services.ledger.get_chunk(run.id, 0)
    assert done[:5] == ["0", "1..500", "done", str(chunk.rows), str(chunk.rows_rejected)]
    assert float(done[5]) >= 0 and done[6] == "1"
    assert pending == ["1", "501..1000", "pending", "0"]


def test_a_worker_whose_broker_stays_down_retries_then_exits_1_naming_it(
    ledger_url: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # Its own level: a Celery worker earlier in the session may have raised the root's.
    caplog.set_level("WARNING", logger="etl.cli.processes")
    assert main(["worker", "--broker-wait", "1.5"]) == 1  # tries at once, then after 1 s

    line = one_error_line(capsys)
    assert "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1//" in line
    assert "trying again in 1 s" in caplog.text  # it waited before giving up
