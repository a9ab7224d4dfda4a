"""The consumer's view of the bucket: the layout read back, latest, retention, manifests."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from etl.domain.layout import (
    manifest_key,
    parse_run_object_key,
    part_key,
    pipeline_prefix,
    run_prefix,
    success_key,
)
from etl.domain.manifest import build_manifest
from etl.domain.outputs import (
    ManifestError,
    RunOutput,
    StoredObject,
    choose_latest,
    choose_partitions,
    choose_prunable,
    group_runs,
    manifest_problems,
    parse_manifest,
    part_problems,
)
from etl.domain.runs import Chunk, ChunkState, Run, RunState, Trigger

from builders import utc_day

BASE = "etl/orders_daily"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def objects_of(
    day: date, run_id: str, written: datetime, *, parts: int = 2, committed: bool = True
) -> list[StoredObject]:
    prefix = run_prefix("etl", "orders_daily", f"dt={day}", run_id)
    keys = [part_key(prefix, i, "jsonl.gz") for i in range(parts)]
    if committed:
        keys += [manifest_key(prefix), success_key(prefix)]
    return [StoredObject(key, 100, written) for key in keys]


def runs_of(*groups: list[StoredObject]) -> list[RunOutput]:
    return group_runs(BASE, [stored for group in groups for stored in group])


# -- the layout, read back ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["etl", "", "exports/etl/"])
@pytest.mark.parametrize("name", ["part-00042.jsonl.gz", "_manifest.json", "_SUCCESS"])
def test_a_key_written_by_the_layout_parses_back_to_its_run(prefix: str, name: str) -> None:
    run = run_prefix(prefix, "orders_daily", "dt=2026-11-01", "r-1")

    parsed = parse_run_object_key(pipeline_prefix(prefix, "orders_daily"), f"{run}/{name}")

    assert parsed is not None
    assert (parsed.logical_date, parsed.run_id, parsed.run_prefix, parsed.name) == (
        date(2026, 11, 1),
        "r-1",
        run,
        name,
    )


@pytest.mark.parametrize(
    "key",
    [
        "etl/orders_daily/dt=2026-11-01/run=r1/sub/part-00000.jsonl.gz",  # deeper
        "etl/orders_daily/dt=2026-11-01/part-00000.jsonl.gz",  # no run
        "etl/orders_daily/dt=2026-13-01/run=r1/_SUCCESS",  # not a date
        "etl/orders_daily/dt=20261101/run=r1/_SUCCESS",
        "etl/orders_daily_v2/dt=2026-11-01/run=r1/_SUCCESS",  # another pipeline
        "etl/orders_daily/eu/dt=2026-11-01/run=r1/_SUCCESS",  # a nested output path
        "etl/orders_daily/dt=2026-11-01/run=/_SUCCESS",
        "etl/orders_daily/notes.txt",
    ],
)
def test_keys_outside_the_layout_belong_to_no_run(key: str) -> None:
    assert parse_run_object_key(BASE, key) is None


def test_objects_are_grouped_by_run_newest_first_and_strays_ignored() -> None:
    t = NOW - timedelta(days=1)
    runs = group_runs(
        BASE,
        [
            *objects_of(date(2026, 11, 1), "a", t),
            *objects_of(date(2026, 11, 3), "b", t, committed=False),
            *objects_of(date(2026, 11, 2), "c", t, parts=3),
            StoredObject(f"{BASE}/README", 5, t),
        ],
    )

    assert [(r.run_id, r.committed, len(r.objects)) for r in runs] == [
        ("b", False, 2),
        ("c", True, 5),
        ("a", True, 4),
    ]
    assert runs[1].total_bytes == 500
    assert runs[1].committed_at == t


# -- latest -------------------------------------------------------------------------------


def test_latest_is_the_newest_committed_run_never_an_incomplete_one() -> None:
    t = NOW - timedelta(hours=1)
    runs = runs_of(
        objects_of(date(2026, 11, 20), "old", t),
        objects_of(date(2026, 11, 21), "committed", t),
        objects_of(date(2026, 11, 22), "running", t, committed=False),
    )

    latest = choose_latest(runs)

    assert latest is not None and latest.run_id == "committed"


@pytest.mark.parametrize("missing", ["_SUCCESS", "_manifest.json"])
def test_a_run_missing_its_manifest_or_its_marker_is_not_committed(missing: str) -> None:
    t = NOW - timedelta(hours=1)
    newer = [o for o in objects_of(date(2026, 11, 22), "new", t) if not o.key.endswith(missing)]
    runs = runs_of(objects_of(date(2026, 11, 21), "old", t), newer)

    latest = choose_latest(runs)

    assert latest is not None and latest.run_id == "old"
    assert [run.committed for run in runs] == [False, True]


def test_of_two_committed_runs_for_one_date_the_last_committed_is_latest() -> None:
    day = date(2026, 11, 21)
    runs = runs_of(
        objects_of(day, "zz-first", NOW - timedelta(hours=5)),
        objects_of(day, "aa-rerun", NOW - timedelta(hours=1)),
    )

    latest = choose_latest(runs)

    assert latest is not None and latest.run_id == "aa-rerun"


def test_a_partition_consumer_gets_the_last_committed_run_of_each_partition_oldest_first() -> None:
    runs = runs_of(
        objects_of(date(2026, 11, 21), "zz-first", NOW - timedelta(hours=5)),
        objects_of(date(2026, 11, 21), "aa-rerun", NOW - timedelta(hours=1)),
        objects_of(date(2026, 11, 20), "older", NOW - timedelta(hours=9)),
        objects_of(date(2026, 11, 22), "writing", NOW, committed=False),
    )

    chosen = choose_partitions(runs)

    assert [(run.partition, run.run_id) for run in chosen] == [
        ("dt=2026-11-20", "older"),
        ("dt=2026-11-21", "aa-rerun"),
    ]
    assert [run.run_id for run in choose_partitions(runs, since="dt=2026-11-20")] == ["aa-rerun"]


def test_there_is_no_latest_without_a_committed_run() -> None:
    assert choose_latest(runs_of(objects_of(date(2026, 11, 22), "r", NOW, committed=False))) is None
    assert choose_latest([]) is None


# -- retention ----------------------------------------------------------------------------


def test_retention_deletes_old_quiet_runs_and_keeps_recent_ones() -> None:
    long_ago = NOW - timedelta(days=60)
    runs = runs_of(
        objects_of(date(2026, 9, 1), "old-committed", long_ago),
        objects_of(date(2026, 9, 2), "old-failed", long_ago, committed=False),
        objects_of(date(2026, 11, 10), "recent", NOW - timedelta(days=13)),
        objects_of(date(2026, 11, 22), "latest", NOW - timedelta(hours=2)),
    )

    pruned = choose_prunable(runs, now=NOW, keep_days=30)

    assert sorted(run.run_id for run in pruned) == ["old-committed", "old-failed"]


def test_retention_never_deletes_the_latest_committed_run_however_old() -> None:
    long_ago = NOW - timedelta(days=400)
    runs = runs_of(
        objects_of(date(2025, 10, 1), "older", long_ago),
        objects_of(date(2025, 10, 2), "latest", long_ago),
        objects_of(date(2025, 10, 3), "never-committed", long_ago, committed=False),
    )

    pruned = choose_prunable(runs, now=NOW, keep_days=7)

    assert sorted(run.run_id for run in pruned) == ["never-committed", "older"]


def test_an_old_date_written_recently_is_kept_until_it_is_old_too() -> None:
    # A backfill of last year, committed yesterday; and an old run still writing parts.
    runs = runs_of(
        objects_of(date(2025, 1, 1), "backfilled", NOW - timedelta(days=1)),
        objects_of(date(2025, 1, 2), "writing", NOW - timedelta(minutes=5), committed=False),
        objects_of(date(2026, 11, 22), "latest", NOW),
    )

    assert choose_prunable(runs, now=NOW, keep_days=30) == []
    later = choose_prunable(runs, now=NOW + timedelta(days=31), keep_days=30)
    assert sorted(run.run_id for run in later) == ["backfilled", "writing"]


def test_retention_keeps_the_boundary_day() -> None:
    written = NOW - timedelta(days=40)
    runs = runs_of(
        objects_of(date(2026, 10, 24), "on-the-boundary", written),
        objects_of(date(2026, 10, 23), "past-it", written),
        objects_of(date(2026, 11, 22), "latest", NOW),
    )

    assert [run.run_id for run in choose_prunable(runs, now=NOW, keep_days=30)] == ["past-it"]


def test_retention_refuses_to_keep_less_than_a_day() -> None:
    with pytest.raises(ValueError, match="keep_days"):
        choose_prunable([], now=NOW, keep_days=0)


# -- manifests ----------------------------------------------------------------------------


def committed_run_manifest(run_id: str = "r-1", day: date = date(2026, 11, 1)) -> bytes:
    prefix = run_prefix("etl", "orders_daily", f"dt={day}", run_id)
    run = Run(
        id=run_id,
        pipeline="orders_daily",
        logical_date=day,
        interval=utc_day(day),
        trigger=Trigger.MANUAL,
        state=RunState.COMMITTING,
        params={},
        idempotency_key=None,
        created_at=NOW,
        updated_at=NOW,
        chunk_count=2,
    )
    chunks = [
        Chunk(
            run_id=run_id,
            index=i,
            key_lo=i * 10,
            key_hi=i * 10 + 10,
            state=ChunkState.DONE,
            s3_key=part_key(prefix, i, "jsonl.gz"),
            rows=10 + i,
            bytes=200 + i,
            sha256=f"{i:064x}",
        )
        for i in range(2)
    ]
    schema = [{"name": "id", "type": "int"}]
    manifest = build_manifest(
        run,
        chunks,
        output_format="jsonl.gz",
        schema=schema,
        created_at=NOW,
        mode="snapshot",
        partition=f"dt={day}",
    )
    return json.dumps(manifest).encode()


def run_output(run_id: str = "r-1", day: date = date(2026, 11, 1)) -> RunOutput:
    [run] = runs_of(objects_of(day, run_id, NOW))
    return run


def test_a_manifest_the_pipeline_writes_is_read_back_in_full() -> None:
    manifest = parse_manifest(committed_run_manifest())

    assert (manifest.version, manifest.run_id) == (1, "r-1")
    assert manifest.logical_date == date(2026, 11, 1)
    assert [(p.rows, p.bytes) for p in manifest.parts] == [(10, 200), (11, 201)]
    assert manifest.total_rows == 21
    assert manifest.format == "jsonl.gz"
    assert manifest_problems(manifest, run_output()) == []


def test_fields_a_reader_does_not_know_are_ignored() -> None:
    document = json.loads(committed_run_manifest())
    document["compression_level"] = 6
    document["parts"][0]["min_key"] = 1

    assert parse_manifest(json.dumps(document).encode()).total_rows == 21


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"manifest_version": 2}, "manifest_version 2 is not supported"),
        ({"manifest_version": "1"}, "'manifest_version'"),
        ({"run_id": None}, "'run_id'"),
        ({"logical_date": "2026-11-31"}, "'logical_date'"),
        ({"parts": {}}, "'parts'"),
        ({"total_rows": True}, "'total_rows'"),
    ],
)
def test_a_manifest_of_another_version_or_missing_a_field_is_refused(
    change: dict[str, object], named: str
) -> None:
    document = {**json.loads(committed_run_manifest()), **change}

    with pytest.raises(ManifestError, match=named):
        parse_manifest(json.dumps(document).encode())


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b'{"parts": [1]}'])
def test_what_is_not_a_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_a_part_entry_with_a_row_count_of_the_wrong_type_is_refused() -> None:
    document = json.loads(committed_run_manifest())
    document["parts"][1]["rows"] = "11"

    with pytest.raises(ManifestError, match="'rows'"):
        parse_manifest(json.dumps(document).encode())


def test_a_manifest_found_under_another_run_or_date_is_not_trusted() -> None:
    manifest = parse_manifest(committed_run_manifest("r-1", date(2026, 11, 1)))

    problems = manifest_problems(manifest, run_output("r-2", date(2026, 11, 2)))

    assert any("names run r-1" in p for p in problems)
    assert any("partition dt=2026-11-01, found under dt=2026-11-02" in p for p in problems)
    assert any("parts outside the run" in p for p in problems)


def test_a_manifest_whose_parts_do_not_add_up_is_not_trusted() -> None:
    document = json.loads(committed_run_manifest())
    document["total_rows"] = 22

    problems = manifest_problems(parse_manifest(json.dumps(document).encode()), run_output())

    assert problems == ["manifest total_rows is 22, its parts add up to 21"]


def test_part_problems_name_the_part_and_each_difference() -> None:
    part = parse_manifest(committed_run_manifest()).parts[0]

    assert part_problems(part, size=part.bytes, sha256=part.sha256, rows=part.rows) == []
    assert part_problems(part, size=None, sha256=None, rows=None) == [f"{part.key}: missing"]
    assert part_problems(part, size=1, sha256="ab", rows=3) == [
        f"{part.key}: 1 bytes, manifest says 200",
        f"{part.key}: sha256 ab, manifest says {part.sha256}",
        f"{part.key}: 3 rows, manifest says 10",
    ]
