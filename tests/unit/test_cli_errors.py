"""Every documented failure of the real ``etl`` command, run as a process: exit non-zero
with one line on stderr, ``etl: error: <what>: <why and the fix>``, nothing on stdout and
no traceback. The services it cannot reach are closed ports on this host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import etl.cli.runs as runs_commands
from etl.cli import main

CLOSED_BROKER = "amqp://guest:secret@127.0.0.1:1//"
CLOSED_DATABASE = "postgresql+psycopg2://etl:secret@127.0.0.1:1/etl"


def etl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m etl <args>`` on a SQLite ledger of the test's own, with ``env``."""
    settings = {
        "ETL_DATABASE_URL": "sqlite:///" + str(tmp_path / "ledger.db"),
        "ETL_BROKER_URL": "memory://",
        "ETL_S3_ENDPOINT_URL": "http://127.0.0.1:1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "env", "status", "expected"),
    [
        pytest.param(
            ["dlq", "list"],
            {"ETL_BROKER_URL": CLOSED_BROKER},
            1,
            "etl: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1//: [Errno 111] "
            "Connection refused; start it, or point ETL_BROKER_URL at it",
            id="dlq-list-broker-down",
        ),
        pytest.param(
            ["dlq", "replay", "--all"],
            {"ETL_BROKER_URL": CLOSED_BROKER},
            1,
            "etl: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1//: [Errno 111] "
            "Connection refused; start it, or point ETL_BROKER_URL at it",
            id="dlq-replay-broker-down",
        ),
        pytest.param(
            ["reconcile"],
            {"ETL_BROKER_URL": CLOSED_BROKER},
            1,
            "etl: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1//",
            id="reconcile-broker-down",
        ),
        pytest.param(
            ["runs"],
            {"ETL_DATABASE_URL": CLOSED_DATABASE},
            1,
            "etl: error: cannot open the ledger at postgresql+psycopg2://etl:***@127.0.0.1:1/etl: "
            "(psycopg2.OperationalError) connection to server at",
            id="database-down",
        ),
        pytest.param(
            ["runs"],
            {"ETL_DATABASE_URL": "postgresql+psycopg2://etl:secret@127.0.0.1:abc/etl"},
            2,
            "etl: error: ETL_DATABASE_URL postgresql+psycopg2://etl:***@127.0.0.1:abc/etl: the "
            "port 'abc' is not a number from 0 to 65535; write host:port",
            id="database-url-port-abc",
        ),
        pytest.param(
            ["worker"],
            {"ETL_BROKER_URL": "amqp://guest:secret@127.0.0.1:5672x//"},
            2,
            "etl: error: ETL_BROKER_URL amqp://guest:***@127.0.0.1:5672x//: the port '5672x'",
            id="worker-broker-url-port",
        ),
        pytest.param(
            ["run", "no_such_pipeline"],
            {},
            2,
            "etl: error: unknown pipeline 'no_such_pipeline' (known: orders_daily",
            id="unknown-pipeline",
        ),
        pytest.param(
            ["backfill", "no_such_pipeline", "--start", "2026-10-01", "--end", "2026-10-02"],
            {},
            2,
            "etl: error: unknown pipeline 'no_such_pipeline' (known: orders_daily",
            id="backfill-unknown-pipeline",
        ),
        pytest.param(
            ["run", "orders_daily", "--interval", "2026-11-22T14:00:00+01:00"],
            {},
            2,
            "etl: error: 2026-11-22T13:00:00+00:00 does not start an interval",
            id="interval-not-of-the-pipeline",
        ),
        pytest.param(
            ["run", "orders_daily", "--interval", "2026-02-30"],
            {},
            2,
            "etl: error: run: argument --interval/--date: ",
            id="interval-not-a-date",
        ),
        pytest.param(
            ["backfill", "orders_daily", "--start", "2026-10-05", "--end", "2026-10-01"],
            {},
            2,
            "etl: error: end 2026-10-01 is before start 2026-10-05",
            id="backfill-backwards",
        ),
        pytest.param(
            ["runs", "--frob"],
            {},
            2,
            "etl: error: unrecognized arguments: --frob; see etl --help",
            id="usage",
        ),
    ],
)
def test_a_documented_failure_is_one_line_and_a_nonzero_exit(
    tmp_path: Path, args: list[str], env: dict[str, str], status: int, expected: str
) -> None:
    done = etl(tmp_path, *args, **env)

    assert done.returncode == status, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(expected)
    assert "secret" not in line


def test_an_unexpected_error_is_one_line_unless_asked_for_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object, settings: object) -> int:
        raise RuntimeError("something no command expected\nand a second line")

    monkeypatch.setattr(runs_commands, "cmd_pipelines", broken)

    assert main(["pipelines"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "etl: error: unexpected RuntimeError: something no command expected; "
        "`etl --traceback pipelines ...` shows where, for a bug report\n"
    )
    with pytest.raises(RuntimeError, match="something no command expected"):
        main(["--traceback", "pipelines"])
