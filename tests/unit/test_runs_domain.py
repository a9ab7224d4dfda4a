from __future__ import annotations

import random
from datetime import UTC, date, datetime
from typing import Any

import pytest

from etl.domain.dates import parse_logical_date, previous_day
from etl.domain.layout import manifest_key, part_key, run_prefix, success_key
from etl.domain.manifest import MANIFEST_VERSION, build_manifest
from etl.domain.retry import backoff_seconds
from etl.domain.runs import Chunk, ChunkState, Run, RunState, Trigger, commit_problems
from etl.domain.windows import RunWindow

from builders import utc_day

RUN_ID = "0b9f5c1e-5d8e-4a53-9c57-0c6f6b1f3c2d"
CREATED = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def done_chunk(
    index: int, rows: int = 100, rejected: dict[str, int] | None = None, **changes: Any
) -> Chunk:
    values: dict[str, Any] = {
        "run_id": RUN_ID,
        "index": index,
        "key_lo": index * 100,
        "key_hi": (index + 1) * 100,
        "state": ChunkState.DONE,
        "attempts": 1,
        "s3_key": f"etl/orders_daily/dt=2026-11-01/run={RUN_ID}/part-{index:05d}.jsonl.gz",
        "rows": rows,
        "bytes": 1000 + index,
        "sha256": f"{index:064x}",
        "rows_rejected": sum((rejected or {}).values()),
        "rejected_by_reason": rejected or {},
    }
    values.update(changes)
    return Chunk(**values)


def a_run(**changes: Any) -> Run:
    values: dict[str, Any] = {
        "id": RUN_ID,
        "pipeline": "orders_daily",
        "logical_date": date(2026, 11, 1),
        "interval": utc_day(date(2026, 11, 1)),
        "trigger": Trigger.MANUAL,
        "state": RunState.COMMITTING,
        "params": {"chunk_size": 100},
        "idempotency_key": None,
        "created_at": CREATED,
        "updated_at": CREATED,
        "chunk_count": 3,
        "window": RunWindow(key_column="id", key_min=0, key_max=299),
    }
    values.update(changes)
    return Run(**values)


# -- commit_problems ---------------------------------------------------------------------


def test_every_chunk_done_once_has_no_commit_problems() -> None:
    assert commit_problems(3, [done_chunk(0), done_chunk(1), done_chunk(2)]) == []


def test_a_run_planned_with_zero_chunks_has_no_commit_problems() -> None:
    assert commit_problems(0, []) == []


def test_a_missing_chunk_index_is_a_commit_problem() -> None:
    problems = commit_problems(3, [done_chunk(0), done_chunk(2)])
    assert problems == ["expected chunks 0..2, ledger has 2; missing: 1"]


def test_an_extra_chunk_index_is_a_commit_problem() -> None:
    problems = commit_problems(2, [done_chunk(0), done_chunk(1), done_chunk(2)])
    assert problems == ["expected chunks 0..1, ledger has 3"]


@pytest.mark.parametrize("state", [ChunkState.PENDING, ChunkState.RUNNING, ChunkState.FAILED])
def test_a_chunk_not_done_is_named_in_the_commit_problem(state: ChunkState) -> None:
    chunks = [done_chunk(0), done_chunk(1, state=state, s3_key=None), done_chunk(2)]
    assert commit_problems(3, chunks) == ["chunks not done: 1"]


def test_many_chunks_not_done_are_listed_up_to_ten_and_counted() -> None:
    chunks = [done_chunk(i, state=ChunkState.PENDING) for i in range(15)]
    assert commit_problems(15, chunks) == [
        "chunks not done: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 5 more"
    ]


def test_two_chunks_sharing_a_part_key_is_a_commit_problem() -> None:
    chunks = [done_chunk(0), done_chunk(1, s3_key=done_chunk(0).s3_key), done_chunk(2)]
    assert commit_problems(3, chunks) == ["two chunks share a part key"]


def test_a_run_never_planned_cannot_be_committed() -> None:
    assert commit_problems(None, []) == ["the run was never planned"]
    assert commit_problems(None, [done_chunk(0)]) == ["the run was never planned"]


# -- build_manifest ----------------------------------------------------------------------


def test_the_manifest_lists_parts_in_index_order_and_sums_rows_and_rejections() -> None:
    chunks = [
        done_chunk(2, rows=30, rejected={"invalid_email": 2}),
        done_chunk(0, rows=10, rejected={"missing_amount": 1, "invalid_email": 1}),
        done_chunk(1, rows=20),
    ]
    schema = [{"name": "order_id", "type": "integer"}]
    manifest = build_manifest(
        a_run(),
        chunks,
        output_format="jsonl.gz",
        schema=schema,
        created_at=CREATED,
        mode="snapshot",
        partition="dt=2026-11-01",
    )

    assert manifest["manifest_version"] == MANIFEST_VERSION == 1
    assert manifest["pipeline"] == "orders_daily"
    assert manifest["run_id"] == RUN_ID
    assert manifest["logical_date"] == "2026-11-01"
    assert manifest["window"] == {"key_column": "id", "key_min": 0, "key_max": 299}
    assert manifest["format"] == "jsonl.gz"
    assert manifest["schema"] == schema
    assert manifest["parts"] == [
        {"key": c.s3_key, "rows": c.rows, "bytes": c.bytes, "sha256": c.sha256}
        for c in sorted(chunks, key=lambda c: c.index)
    ]
    assert manifest["total_rows"] == 60
    assert manifest["rejected_by_reason"] == {"invalid_email": 3, "missing_amount": 1}
    assert manifest["rejected_rows"] == 4
    assert manifest["params"] == {"chunk_size": 100}
    assert manifest["created_at"] == "2026-11-02T02:00:00+00:00"


def test_the_manifest_of_a_run_with_no_chunks_has_no_parts() -> None:
    manifest = build_manifest(
        a_run(chunk_count=0, window=None),
        [],
        output_format="jsonl.gz",
        schema=[],
        created_at=CREATED,
        mode="snapshot",
        partition="dt=2026-11-01",
    )
    assert manifest["parts"] == []
    assert manifest["total_rows"] == 0
    assert manifest["rejected_rows"] == 0
    assert manifest["rejected_by_reason"] == {}
    assert manifest["window"] == {}


# -- layout ------------------------------------------------------------------------------


def test_layout_keys_follow_the_documented_layout() -> None:
    prefix = run_prefix("etl", "orders_daily", "dt=2026-11-01", RUN_ID)
    assert prefix == f"etl/orders_daily/dt=2026-11-01/run={RUN_ID}"
    assert part_key(prefix, 42, "jsonl.gz") == f"{prefix}/part-00042.jsonl.gz"
    assert part_key(prefix, 0, "jsonl.gz") == f"{prefix}/part-00000.jsonl.gz"
    assert manifest_key(prefix) == f"{prefix}/_manifest.json"
    assert success_key(prefix) == f"{prefix}/_SUCCESS"


@pytest.mark.parametrize("prefix", ["/exports/etl/", "exports/etl/", "/exports/etl"])
def test_slashes_around_the_prefix_are_trimmed(prefix: str) -> None:
    assert run_prefix(prefix, "orders_daily", "dt=2026-01-02", "r1") == (
        "exports/etl/orders_daily/dt=2026-01-02/run=r1"
    )


@pytest.mark.parametrize("prefix", ["", "/", "//"])
def test_an_empty_prefix_starts_at_the_pipeline(prefix: str) -> None:
    assert run_prefix(prefix, "orders_daily", "dt=2026-01-02", "r1") == (
        "orders_daily/dt=2026-01-02/run=r1"
    )


# -- retry -------------------------------------------------------------------------------


class EdgeRandom(random.Random):
    """Always draws one end of the interval, to pin down the jitter's bounds."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_backoff_doubles_with_each_attempt_between_half_and_all_of_the_ceiling() -> None:
    low, high = EdgeRandom(high=False), EdgeRandom(high=True)
    assert [backoff_seconds(n, rng=low) for n in range(5)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [backoff_seconds(n, rng=high) for n in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_backoff_stays_within_half_and_all_of_its_ceiling_for_any_draw() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(300.0, 2.0 * 2**attempt)
        waits = [backoff_seconds(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits), attempt
        assert len(set(waits)) > 1, "no jitter"


def test_backoff_never_shrinks_as_attempts_grow_below_the_cap() -> None:
    # Equal jitter: the least wait of attempt n+1 is the most wait of attempt n.
    rng = random.Random(11)
    for attempt in range(7):  # 2 * 2**7 = 256 s, still under the 300 s cap
        assert backoff_seconds(attempt + 1, rng=rng) >= backoff_seconds(attempt, rng=rng)


def test_backoff_is_capped() -> None:
    rng = random.Random(3)
    waits = [backoff_seconds(attempt, cap=300.0, rng=rng) for attempt in range(8, 40)]
    assert all(150.0 <= wait <= 300.0 for wait in waits)
    assert backoff_seconds(50, cap=60.0, rng=EdgeRandom(high=True)) == 60.0


# -- dates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "logical_date"),
    [
        ("UTC", date(2026, 3, 28)),
        ("America/Los_Angeles", date(2026, 3, 27)),  # still 2026-03-28 17:30 there
        ("Europe/London", date(2026, 3, 28)),
        ("Pacific/Auckland", date(2026, 3, 28)),  # already 2026-03-29 13:30 there
    ],
)
def test_previous_day_is_yesterday_in_the_pipelines_timezone(
    timezone: str, logical_date: date
) -> None:
    assert previous_day(datetime(2026, 3, 29, 0, 30, tzinfo=UTC), timezone) == logical_date


def test_previous_day_crosses_month_and_year_boundaries() -> None:
    assert previous_day(datetime(2027, 1, 1, 2, 0, tzinfo=UTC), "UTC") == date(2026, 12, 31)
    assert previous_day(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "Asia/Tokyo") == date(2026, 2, 28)


def test_parse_logical_date_reads_yyyy_mm_dd() -> None:
    assert parse_logical_date("2026-11-01") == date(2026, 11, 1)
    assert parse_logical_date("2024-02-29") == date(2024, 2, 29)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30",
        "2026-13-01",
        "2026-1-1",
        "20261101",
        "2026-11-01T00:00:00",
        "2026/11/01",
        "",
        "yesterday",
        " 2026-11-01",
    ],
)
def test_parse_logical_date_refuses_anything_else_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a date in YYYY-MM-DD form") as caught:
        parse_logical_date(text)
    assert repr(text) in str(caught.value)


def test_parse_logical_date_refuses_an_iso_week_date_of_the_same_length() -> None:
    # date.fromisoformat reads "2026-W01-1" as 2025-12-29 on Python 3.11+.
    with pytest.raises(ValueError, match="not a date in YYYY-MM-DD form"):
        parse_logical_date("2026-W01-1")
