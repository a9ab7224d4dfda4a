"""The ``etl`` command for scripts and for people: help on everything, ``--version``,
``--json`` wherever something is printed, and tables whose columns fit their content."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine

from etl.adapters.ledger import Ledger
from etl.cli import build_parser, main
from etl.cli.display import table
from etl.domain.runs import Run, RunState, Trigger

from builders import utc_day

# Long-running processes print logs, not a result.
PROCESSES = {"etl worker", "etl beat", "etl api"}
LONG_NAME = "customer_lifetime_value_rollup"  # past the 16 characters the table once had


def every_parser(
    parser: argparse.ArgumentParser, path: str = "etl"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Each (sub)command's parser, by its command line: ``etl``, ``etl dlq list``, ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_parser(sub, f"{path} {name}")


def is_command(parser: argparse.ArgumentParser) -> bool:
    """A parser that runs something (no subcommands below it)."""
    return not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_every_command_option_and_argument_has_help() -> None:
    missing = []
    for command, parser in every_parser(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{command} {name}" for name in action.choices if name not in helped]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{command} {'/'.join(action.option_strings) or action.dest}")

    assert missing == []


def test_every_command_that_prints_takes_json() -> None:
    commands = [(c, p) for c, p in every_parser(build_parser()) if is_command(p)]
    assert len(commands) > 20  # the walk reaches them
    without = [
        command
        for command, parser in commands
        if command not in PROCESSES and "--json" not in parser._option_string_actions
    ]
    assert without == []


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"etl {importlib.metadata.version('nightly-etl')}\n"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["runs", "--frob"], "etl: error: unrecognized arguments: --frob; see etl --help"),
        (
            ["runs", "--limit", "0"],
            "etl: error: runs: argument --limit: must be at least 1, got 0; see etl runs --help",
        ),
        (
            ["dlq", "show", "x"],
            "etl: error: dlq show: argument id: invalid int value: 'x'; see etl dlq show --help",
        ),
    ],
)
def test_a_usage_error_names_etl_once_and_the_command_and_where_help_is(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_table_columns_fit_their_widest_cell_and_numbers_align_right() -> None:
    lines = table(
        ["NAME", "ROWS", "NOTE"],
        [["a", 1234567, "x"], [LONG_NAME, 5, None]],
        right={"ROWS"},
    )
    assert lines == [
        "NAME" + " " * (len(LONG_NAME) - 4) + "       ROWS  NOTE",
        "a" + " " * (len(LONG_NAME) - 1) + "  1,234,567  x",
        LONG_NAME + "          5",
    ]


@pytest.fixture
def recorded_runs(
    sqlite_engine: Engine, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> list[Run]:
    """Two runs in a SQLite ledger the CLI reads: one of a pipeline with a long name,
    one with counts in the millions."""
    monkeypatch.setenv("ETL_DATABASE_URL", str(sqlite_engine.url))
    runs = []
    for pipeline, day in ((LONG_NAME, date(2026, 11, 1)), ("orders_daily", date(2026, 11, 2))):
        run, _ = ledger.create_run(
            pipeline=pipeline,
            interval=utc_day(day),
            logical_date=day,
            trigger=Trigger.MANUAL,
            params={},
        )
        runs.append(run)
    ledger.move_run(
        runs[1].id, RunState.FAILED, rows_written=1_234_567, rows_rejected=89_012, reason="x"
    )
    return [ledger.get_run(run.id) for run in runs]


def test_runs_table_keeps_its_columns_with_long_names_and_separates_thousands(
    recorded_runs: list[Run], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs"]) == 0

    header, *lines = capsys.readouterr().out.splitlines()
    by_id = {line[:36]: line for line in lines}
    long_run, counted = (by_id[run.id] for run in recorded_runs)
    for line, run in ((long_run, recorded_runs[0]), (counted, recorded_runs[1])):
        assert line.index(run.pipeline) == header.index("PIPELINE")
        assert line.index(str(run.logical_date)) == header.index("DATE")
        assert line.index(run.state) == header.index("STATE")
    # Counts end where their header ends, with thousands separators.
    assert counted.index("1,234,567") + len("1,234,567") == header.index("ROWS") + len("ROWS")
    assert counted.index("89,012") + len("89,012") == header.index("REJECTED") + len("REJECTED")


def test_runs_json_keeps_counts_as_plain_numbers(
    recorded_runs: list[Run], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "--json"]) == 0

    listed = {run["id"]: run for run in json.loads(capsys.readouterr().out)}
    counted = listed[recorded_runs[1].id]
    assert (counted["rows_written"], counted["rows_rejected"]) == (1_234_567, 89_012)
    assert counted["state"] == "failed"
    assert listed[recorded_runs[0].id]["pipeline"] == LONG_NAME


def test_status_prints_counts_with_separators(
    recorded_runs: list[Run], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", recorded_runs[1].id]) == 0
    assert "rows      1,234,567 written, 89,012 rejected" in capsys.readouterr().out


@pytest.fixture
def cli_with_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """The CLI on a SQLite ledger, Celery's in-memory broker and an S3 that cannot be
    reached (so nothing refuses for a missing bucket)."""
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    monkeypatch.setenv("ETL_DATABASE_URL", url)
    monkeypatch.setenv("ETL_BROKER_URL", "memory://")
    monkeypatch.setenv("ETL_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    from etl.adapters.db import make_engine

    return Ledger(make_engine(url))


def test_run_json_prints_one_document_with_the_run_id(
    cli_with_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "orders_daily", "--interval", "2026-11-20", "--idempotency-key", "k1"]
    assert main([*argv, "--json"]) == 0

    document = json.loads(capsys.readouterr().out)  # the whole of stdout is the document
    recorded = cli_with_ledger.get_run(document["id"])
    assert (document["pipeline"], document["logical_date"]) == ("orders_daily", "2026-11-20")
    assert document["state"] == recorded.state == "queued" and document["created"] is True
    assert document["interval"]["start"] == "2026-11-20T00:00:00+00:00"

    # The same request again: the same run, not a new one.
    assert main([*argv, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["id"], again["created"]) == (document["id"], False)


def test_backfill_json_gives_each_interval_its_decision(
    cli_with_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["backfill", "orders_daily", "--start", "2026-10-01", "--end", "2026-10-03"]
    assert main([*argv, "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["backfill"] is None
    assert [(i["name"], i["run"]) for i in planned["intervals"]] == [
        ("2026-10-01", True),
        ("2026-10-02", True),
        ("2026-10-03", True),
    ]

    assert main([*argv, "--no-wait", "--json"]) == 0
    started = json.loads(capsys.readouterr().out)
    backfill_id = started["backfill"]["id"]
    assert started["backfill"]["max_active"] == 1
    runs = cli_with_ledger.backfill_runs(backfill_id)
    assert [str(run.logical_date) for run in runs] == ["2026-10-01", "2026-10-02", "2026-10-03"]

    assert main(["runs", "--backfill", backfill_id, "--json"]) == 0
    assert [run["id"] for run in json.loads(capsys.readouterr().out)] == [r.id for r in runs]


def test_dlq_list_and_purge_json_on_an_empty_ledger(
    cli_with_ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dlq", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["dlq", "purge", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"purged": 0}
