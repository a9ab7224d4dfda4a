"""The reader, retention and `etl outputs` on runs the real steps committed (moto's S3)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest

from etl.bootstrap import Services
from etl.cli import main
from etl.domain.layout import pipeline_prefix, run_prefix
from etl.domain.runs import Run, RunState, Trigger
from etl.pipelines.orders import transform_orders
from etl.service import execution as steps
from etl.service.outputs import IntegrityError, RunNotCommitted, RunNotFound, RunReader
from etl.service.retention import prune

from builders import as_read, keys_under, utc_day, with_orders

SEEDED = 1500
CHUNK_SIZE = 500


@pytest.fixture
def seeded(services: Services) -> Services:
    return with_orders(services, SEEDED)


@pytest.fixture
def reader(services: Services) -> RunReader:
    return RunReader(services.parts, services.settings.s3_prefix)


@pytest.fixture
def commit(seeded: Services) -> Callable[..., Run]:
    """Run orders_daily for a date through plan, every chunk and commit."""

    def run_for(day: date, *, finish: bool = True) -> Run:
        run, _ = seeded.ledger.create_run(
            pipeline="orders_daily",
            interval=utc_day(day),
            logical_date=day,
            trigger=Trigger.MANUAL,
            params={"chunk_size": CHUNK_SIZE},
        )
        steps.plan_run(seeded, run.id)
        for chunk in seeded.ledger.get_chunks(run.id):
            steps.transform_chunk(seeded, run.id, chunk.index)
        if finish:
            assert steps.commit_run(seeded, run.id).state is RunState.SUCCEEDED
        return seeded.ledger.get_run(run.id)

    return run_for


def expected_rows(services: Services) -> list[dict[str, object]]:
    from sqlalchemy import select

    from etl.adapters.sample_orders import ORDERS_TABLE

    with services.source_engine.connect() as conn:
        query = select(ORDERS_TABLE).order_by(ORDERS_TABLE.c.id)
        rows = [dict(row) for row in conn.execute(query).mappings()]
    return as_read(transform_orders(rows).records)


def overwrite(services: Services, key: str, data: bytes) -> None:
    services.parts.client.put_object(Bucket=services.parts.bucket, Key=key, Body=data)


def other_part_bytes() -> bytes:
    return gzip.compress(b'{"order_id": -1}\n', mtime=0)


# -- the reader -----------------------------------------------------------------------


def test_the_rows_of_the_latest_run_are_the_transformed_source(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    commit(date(2026, 11, 1))
    newest = commit(date(2026, 11, 2))

    latest = reader.latest("orders_daily")
    rows = list(reader.rows(latest))

    assert latest.run_id == newest.id
    assert len(latest.manifest.parts) == 3
    assert sorted(rows, key=lambda row: int(str(row["order_id"]))) == expected_rows(seeded)
    assert len(rows) == latest.manifest.total_rows == newest.rows_written


def test_a_partition_reader_gets_the_latest_committed_run_of_each_partition(
    commit: Callable[..., Run], reader: RunReader
) -> None:
    # (Which of two runs of one partition is latest is choose_partitions' test: S3 stamps
    # objects to the second, too coarse for two commits here.)
    first = commit(date(2026, 11, 1))
    again = commit(date(2026, 11, 2))
    commit(date(2026, 11, 3), finish=False)  # never committed: not a partition yet

    partitions = reader.partitions("orders_daily")

    assert [p.output.partition for p in partitions] == ["dt=2026-11-01", "dt=2026-11-02"]
    assert [p.run_id for p in partitions] == [first.id, again.id]
    since = reader.partitions("orders_daily", since="dt=2026-11-01")
    assert [p.run_id for p in since] == [again.id]
    assert reader.partition("orders_daily", "dt=2026-11-02").run_id == again.id
    with pytest.raises(RunNotFound, match="dt=2026-11-03/"):
        reader.partition("orders_daily", "dt=2026-11-03")


def test_latest_skips_a_newer_run_that_is_not_committed(
    reader: RunReader, commit: Callable[..., Run]
) -> None:
    committed = commit(date(2026, 11, 1))
    commit(date(2026, 11, 2), finish=False)  # parts written, no manifest, no _SUCCESS

    assert reader.latest("orders_daily").run_id == committed.id
    assert [run.committed for run in reader.runs("orders_daily")] == [False, True]


def test_a_pipeline_with_no_committed_run_has_no_latest(
    reader: RunReader, commit: Callable[..., Run]
) -> None:
    commit(date(2026, 11, 2), finish=False)

    with pytest.raises(
        RunNotFound, match="no committed run under s3://unit-bucket/etl/orders_daily/"
    ):
        reader.latest("orders_daily")


def test_a_run_that_is_not_committed_cannot_be_opened(
    reader: RunReader, commit: Callable[..., Run]
) -> None:
    run = commit(date(2026, 11, 2), finish=False)

    output = reader.find(run.id, ["orders_daily"])

    with pytest.raises(RunNotCommitted, match=f"run {run.id} .* is not committed"):
        reader.open(output)


def test_finding_an_unknown_run_names_where_it_looked(reader: RunReader) -> None:
    with pytest.raises(RunNotFound, match="no output of run nope under s3://unit-bucket/etl/x/"):
        reader.find("nope", ["x"])


def test_no_row_of_a_part_that_differs_from_the_manifest_is_yielded(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    commit(date(2026, 11, 1))
    run = reader.latest("orders_daily")
    first, second = run.manifest.parts[0], run.manifest.parts[1]
    overwrite(seeded, second.key, other_part_bytes())

    seen = []
    with pytest.raises(IntegrityError, match=f"{second.key}: .*sha256"):
        seen.extend(reader.rows(run))

    assert len(seen) == first.rows  # the first part's rows, none of the second's


def test_a_manifest_of_an_unknown_version_is_refused(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    run = commit(date(2026, 11, 1))
    assert run.manifest_key is not None
    document = json.loads(seeded.parts.get_bytes(run.manifest_key))
    seeded.parts.put_json(run.manifest_key, {**document, "manifest_version": 2})

    with pytest.raises(IntegrityError, match="manifest_version 2 is not supported"):
        reader.latest("orders_daily")


def test_verify_passes_an_intact_run_and_reports_objects_it_does_not_list(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    run = commit(date(2026, 11, 1))
    prefix = run_prefix("etl", "orders_daily", f"dt={run.logical_date}", run.id)
    seeded.parts.put_marker(f"{prefix}/part-00099.jsonl.gz")

    verification = reader.verify(reader.latest("orders_daily"))

    assert verification.ok
    assert [check.ok for check in verification.parts] == [True, True, True]
    assert verification.unlisted == (f"{prefix}/part-00099.jsonl.gz",)


def test_verify_reports_every_missing_altered_or_miscounted_part(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    run = commit(date(2026, 11, 1))
    assert run.manifest_key is not None
    document = json.loads(seeded.parts.get_bytes(run.manifest_key))
    parts = document["parts"]
    seeded.parts.delete_keys([parts[0]["key"]])
    overwrite(seeded, parts[1]["key"], b"not gzip at all")
    # The manifest claims one row more for part 2 (and in total): bytes match, rows do not.
    parts[2]["rows"] += 1
    document["total_rows"] += 1
    seeded.parts.put_json(run.manifest_key, document)

    verification = reader.verify(reader.latest("orders_daily"))

    assert not verification.ok
    missing, altered, miscounted = (check.problems for check in verification.parts)
    assert missing == (f"{parts[0]['key']}: missing",)
    assert any("sha256" in p for p in altered) and any("not jsonl.gz" in p for p in altered)
    assert miscounted == (
        f"{parts[2]['key']}: {parts[2]['rows'] - 1} rows, manifest says {parts[2]['rows']}",
    )


# -- retention --------------------------------------------------------------------------


def test_prune_deletes_old_runs_but_never_the_latest_committed_one(
    seeded: Services, reader: RunReader, commit: Callable[..., Run]
) -> None:
    older = commit(date(2026, 10, 1))
    failed = commit(date(2026, 10, 2), finish=False)
    latest = commit(date(2026, 10, 3))
    # Everything was written just now; seen from 40 days on, all of it is old.
    later = datetime.now(UTC) + timedelta(days=40)

    dry = prune(reader, "orders_daily", keep_days=30, now=later, dry_run=True)
    assert sorted(run.run_id for run in dry) == sorted([older.id, failed.id])
    assert len(reader.runs("orders_daily")) == 3

    pruned = prune(reader, "orders_daily", keep_days=30, now=later)

    assert sorted(run.run_id for run in pruned) == sorted([older.id, failed.id])
    [kept] = reader.runs("orders_daily")
    assert kept.run_id == latest.id and kept.committed
    base = pipeline_prefix("etl", "orders_daily")
    assert all(f"run={latest.id}/" in key for key in keys_under(seeded.parts, base + "/"))
    assert prune(reader, "orders_daily", keep_days=30, now=later) == []


# -- `etl outputs` ----------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, services: Services) -> None:
    monkeypatch.setenv("ETL_S3_BUCKET", services.parts.bucket)
    monkeypatch.setenv("ETL_S3_PREFIX", services.settings.s3_prefix)


def test_outputs_list_marks_the_latest_committed_run(
    cli_env: None, commit: Callable[..., Run], capsys: pytest.CaptureFixture[str]
) -> None:
    committed = commit(date(2026, 11, 1))
    running = commit(date(2026, 11, 2), finish=False)

    assert main(["outputs", "list", "orders_daily", "--json"]) == 0

    listed = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["committed"], r["latest"]) for r in listed] == [
        (running.id, False, False),
        (committed.id, True, True),
    ]


def test_outputs_show_latest_prints_the_manifest(
    cli_env: None, commit: Callable[..., Run], capsys: pytest.CaptureFixture[str]
) -> None:
    run = commit(date(2026, 11, 1))

    assert main(["outputs", "show", "latest", "--pipeline", "orders_daily", "--json"]) == 0

    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == run.id
    assert shown["manifest_uri"] == f"s3://unit-bucket/{run.manifest_key}"
    assert shown["manifest"]["total_rows"] == run.rows_written


def test_outputs_verify_exits_0_for_an_intact_run(
    cli_env: None, commit: Callable[..., Run], capsys: pytest.CaptureFixture[str]
) -> None:
    run = commit(date(2026, 11, 1))

    assert main(["outputs", "verify", run.id]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\nok   ") + out.startswith("ok   ") == 3
    assert f"run {run.id} verified: 3 parts" in out


def test_outputs_verify_exits_1_naming_the_part_that_was_overwritten(
    seeded: Services,
    cli_env: None,
    reader: RunReader,
    commit: Callable[..., Run],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = commit(date(2026, 11, 1))
    part = reader.latest("orders_daily").manifest.parts[1]
    overwrite(seeded, part.key, other_part_bytes())

    assert main(["outputs", "verify", run.id]) == 1

    out, err = capsys.readouterr()
    assert f"BAD  {part.key}: " in out
    [line] = err.splitlines()
    assert line.startswith(f"etl: error: run {run.id} failed verification: 1 of 3 parts")
    assert line.endswith("part-00001.jsonl.gz")


def test_outputs_prune_dry_run_deletes_nothing(
    cli_env: None, reader: RunReader, commit: Callable[..., Run], capsys: pytest.CaptureFixture[str]
) -> None:
    commit(date(2020, 1, 1))
    commit(date(2020, 1, 2))

    assert main(["outputs", "prune", "--keep-days", "1", "--dry-run"]) == 0

    # Both were written just now: neither is old enough, whatever its date.
    assert capsys.readouterr().out.strip() == "would delete 0 runs older than 1 days"
    assert len(reader.runs("orders_daily")) == 2


@pytest.mark.parametrize(
    ("argv", "status", "named"),
    [
        (["outputs", "list", "no_such_pipeline"], 2, "unknown pipeline 'no_such_pipeline'"),
        (["outputs", "show", "latest"], 2, "needs --pipeline"),
        (["outputs", "show", "latest", "--pipeline", "orders_daily"], 1, "no committed run"),
        (["outputs", "verify", "no-such-run"], 1, "no output of run no-such-run"),
        (["outputs", "prune", "--keep-days", "0"], 2, "--keep-days"),
        (["outputs", "prune"], 2, "--keep-days"),
    ],
)
def test_outputs_errors_are_one_line_with_a_status(
    cli_env: None,
    services: Services,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    named: str,
) -> None:
    assert main(argv) == status

    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith("etl: error:") and named in line
    assert out == ""


def test_outputs_on_a_missing_bucket_is_one_line(
    monkeypatch: pytest.MonkeyPatch, services: Services, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_S3_BUCKET", "no-such-bucket")

    assert main(["outputs", "list", "orders_daily"]) == 1

    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("etl: error: cannot read s3://no-such-bucket/etl: ")
    assert "NoSuchBucket" in line
