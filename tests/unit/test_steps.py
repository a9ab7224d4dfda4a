from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from etl.adapters.db import replace_table
from etl.bootstrap import Services
from etl.demo import seed_orders
from etl.domain.chunks import PlanTooLarge
from etl.domain.layout import manifest_key, run_prefix, success_key
from etl.domain.runs import ChunkState, RunState, Trigger
from etl.formats.encoding import read_json_lines_gzip
from etl.pipelines import get_pipeline
from etl.pipelines.orders import ORDERS_TABLE, transform_orders
from etl.service import execution as steps

if TYPE_CHECKING:
    pass

SEEDED = 2000
CHUNK_SIZE = 500


@pytest.fixture
def seeded(services: Services) -> Services:
    assert seed_orders(services.source_engine, SEEDED) == SEEDED
    return services


def create_run(services: Services, params: dict[str, Any] | None = None) -> str:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        logical_date=date(2026, 11, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": CHUNK_SIZE} if params is None else params,
    )
    return run.id


def prefix_of(services: Services, run_id: str) -> str:
    run = services.ledger.get_run(run_id)
    output_path = get_pipeline(run.pipeline).output_path
    return run_prefix(services.settings.s3_prefix, output_path, run.logical_date, run.id)


def transformed_source(services: Services) -> tuple[list[dict[str, Any]], int]:
    with services.source_engine.connect() as conn:
        rows = [
            dict(row)
            for row in conn.execute(select(ORDERS_TABLE).order_by(ORDERS_TABLE.c.id)).mappings()
        ]
    result = transform_orders(rows)
    return result.records, len(result.rejections)


def run_every_chunk(services: Services, run_id: str) -> list[dict[str, Any] | None]:
    return [
        steps.transform_chunk(services, run_id, c.index) for c in services.ledger.get_chunks(run_id)
    ]


def test_plan_run_records_fixed_chunks_and_starts_the_run(seeded: Services) -> None:
    run_id = create_run(seeded)

    pending = steps.plan_run(seeded, run_id)

    assert pending is not None
    assert [(c.index, c.key_lo, c.key_hi, c.state) for c in pending] == [
        (0, 1, 501, ChunkState.PENDING),
        (1, 501, 1001, ChunkState.PENDING),
        (2, 1001, 1501, ChunkState.PENDING),
        (3, 1501, 2001, ChunkState.PENDING),
    ]
    run = seeded.ledger.get_run(run_id)
    assert run.state is RunState.RUNNING
    assert run.chunk_count == 4
    assert run.window == {"key_column": "id", "key_min": 1, "key_max": SEEDED}


def test_plan_run_again_returns_the_unfinished_chunks_of_the_same_plan(seeded: Services) -> None:
    run_id = create_run(seeded)
    first = steps.plan_run(seeded, run_id)
    steps.transform_chunk(seeded, run_id, 1)

    again = steps.plan_run(seeded, run_id)

    assert first is not None and again is not None
    assert [c.index for c in again] == [0, 2, 3]
    assert seeded.ledger.get_run(run_id).chunk_count == 4


def test_a_run_is_transformed_and_committed_with_every_row_exactly_once(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    results = run_every_chunk(seeded, run_id)

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    prefix = prefix_of(seeded, run_id)
    assert run.manifest_key == manifest_key(prefix)
    manifest = json.loads(seeded.parts.get_bytes(run.manifest_key))
    assert [part["key"] for part in manifest["parts"]] == [
        f"{prefix}/part-{index:05d}.jsonl.gz" for index in range(4)
    ]
    assert manifest["parts"] == results
    assert manifest["total_rows"] == run.rows_written
    assert manifest["rejected_rows"] == run.rows_rejected
    assert run.rows_written + run.rows_rejected == SEEDED  # type: ignore[operator]
    assert sum(manifest["rejected_by_reason"].values()) == run.rows_rejected
    assert seeded.parts.get_bytes(success_key(prefix)) == b""

    found: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        data = seeded.parts.get_bytes(part["key"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (part["bytes"], part["sha256"])
        records = read_json_lines_gzip(data)
        assert len(records) == part["rows"]
        found.extend(records)
    expected, rejected = transformed_source(seeded)
    assert found == expected
    assert len({record["order_id"] for record in found}) == len(found)
    assert rejected == run.rows_rejected
    assert set(seeded.parts.list_keys(prefix + "/")) == {
        *(part["key"] for part in manifest["parts"]),
        manifest_key(prefix),
        success_key(prefix),
    }


def test_a_chunk_transformed_twice_is_written_once_with_the_same_result(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    first = steps.transform_chunk(seeded, run_id, 2)
    assert first is not None
    written = seeded.parts.get_bytes(first["key"])
    attempts = seeded.ledger.get_chunk(run_id, 2).attempts

    second = steps.transform_chunk(seeded, run_id, 2)

    assert second == first
    assert seeded.parts.get_bytes(first["key"]) == written
    assert attempts == 1
    assert seeded.ledger.get_chunk(run_id, 2).attempts == attempts
    assert first["sha256"] == hashlib.sha256(written).hexdigest()


def test_a_chunk_left_running_by_a_lost_worker_is_redone_with_the_same_bytes(
    seeded: Services,
) -> None:
    first_run, second_run = create_run(seeded), create_run(seeded)
    for run_id in (first_run, second_run):
        steps.plan_run(seeded, run_id)
    clean = steps.transform_chunk(seeded, first_run, 0)
    seeded.ledger.start_chunk(second_run, 0)  # the attempt a killed worker never finished

    redelivered = steps.transform_chunk(seeded, second_run, 0)

    chunk = seeded.ledger.get_chunk(second_run, 0)
    assert chunk.state is ChunkState.DONE
    assert chunk.attempts == 2
    assert clean is not None and redelivered is not None
    assert (redelivered["rows"], redelivered["bytes"], redelivered["sha256"]) == (
        clean["rows"],
        clean["bytes"],
        clean["sha256"],
    )


def test_commit_fails_the_run_naming_a_chunk_whose_part_is_missing(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    results = run_every_chunk(seeded, run_id)
    lost = results[2]
    assert lost is not None
    seeded.parts.client.delete_object(Bucket="unit-bucket", Key=lost["key"])

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None
    assert "chunk 2" in run.reason and "missing" in run.reason
    assert run.manifest_key is None
    prefix = prefix_of(seeded, run_id)
    assert seeded.parts.part_metadata(manifest_key(prefix)) is None
    assert seeded.parts.part_metadata(success_key(prefix)) is None


def test_commit_fails_the_run_naming_a_chunk_whose_part_differs(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    results = run_every_chunk(seeded, run_id)
    assert results[1] is not None
    seeded.parts.client.put_object(Bucket="unit-bucket", Key=results[1]["key"], Body=b"tampered")

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "chunk 1" in run.reason and "differs" in run.reason


def test_commit_checks_every_part_with_one_listing_and_catches_same_size_tampering(
    seeded: Services,
) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    results = run_every_chunk(seeded, run_id)
    assert results[2] is not None
    recorded = seeded.ledger.get_chunk(run_id, 2)
    assert recorded.etag  # kept from reading the part back after writing it
    key = results[2]["key"]
    original = seeded.parts.get_bytes(key)
    # Other bytes of the very same size, and the sha256 metadata left as it was.
    head = seeded.parts.client.head_object(Bucket="unit-bucket", Key=key)
    seeded.parts.client.put_object(
        Bucket="unit-bucket", Key=key, Body=bytes(reversed(original)), Metadata=head["Metadata"]
    )

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "chunk 2" in run.reason and "differs" in run.reason
    assert seeded.ledger.get_chunk(run_id, 2).state is not ChunkState.DONE  # to redo


def test_a_part_recorded_before_etags_were_kept_is_checked_by_its_sha256(
    seeded: Services,
) -> None:
    from sqlalchemy import update

    from etl.adapters.ledger import chunks_table

    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    results = run_every_chunk(seeded, run_id)
    with seeded.ledger.engine.begin() as conn:  # as a ledger migrated from version 3 holds it
        conn.execute(update(chunks_table).where(chunks_table.c.run_id == run_id).values(etag=None))
    assert results[0] is not None
    key = results[0]["key"]
    original = seeded.parts.get_bytes(key)
    seeded.parts.client.put_object(
        Bucket="unit-bucket", Key=key, Body=bytes(reversed(original)), Metadata={"sha256": "0" * 64}
    )

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "chunk 0" in run.reason and "differs" in run.reason


def test_commit_fails_the_run_naming_a_chunk_that_is_not_done(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    for index in (0, 1, 3):
        steps.transform_chunk(seeded, run_id, index)

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "chunks not done: 2" in run.reason
    assert seeded.parts.part_metadata(success_key(prefix_of(seeded, run_id))) is None


def test_commit_of_a_run_that_already_ended_changes_nothing(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    run_every_chunk(seeded, run_id)
    committed = steps.commit_run(seeded, run_id)

    again = steps.commit_run(seeded, run_id)

    assert again.state is RunState.SUCCEEDED
    assert (again.manifest_key, again.finished_at) == (
        committed.manifest_key,
        committed.finished_at,
    )


def test_a_cancelled_run_transforms_nothing_and_writes_nothing(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    assert seeded.ledger.move_run(run_id, RunState.CANCELLED)

    assert steps.transform_chunk(seeded, run_id, 0) is None

    assert seeded.parts.list_keys(prefix_of(seeded, run_id)) == []
    assert seeded.ledger.get_chunk(run_id, 0).state is ChunkState.PENDING
    assert steps.plan_run(seeded, run_id) is None
    assert steps.commit_run(seeded, run_id).state is RunState.CANCELLED


def test_an_empty_source_plans_no_chunks_and_commits_an_empty_manifest(services: Services) -> None:
    replace_table(services.source_engine, ORDERS_TABLE, [])
    run_id = create_run(services)

    assert steps.plan_run(services, run_id) == []
    run = steps.commit_run(services, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    assert run.chunk_count == 0
    assert (run.rows_written, run.rows_rejected) == (0, 0)
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    assert manifest["parts"] == []
    assert manifest["total_rows"] == 0
    assert manifest["window"] == {"key_column": "id", "key_min": None, "key_max": None}
    assert services.parts.part_metadata(success_key(prefix_of(services, run_id))) is not None


def test_without_a_chunk_size_parameter_the_pipelines_chunk_size_is_used(seeded: Services) -> None:
    run_id = create_run(seeded, params={})
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None
    assert [(c.key_lo, c.key_hi) for c in pending] == [(1, SEEDED + 1)]


def with_max_chunks(services: Services, max_chunks: int) -> Services:
    settings = services.settings.model_copy(update={"max_chunks_per_run": max_chunks})
    return dataclasses.replace(services, settings=settings)


def test_a_plan_over_the_limit_records_nothing_and_fails_the_run_with_the_reason(
    seeded: Services,
) -> None:
    limited = with_max_chunks(seeded, 3)  # 2,000 keys at chunk_size 500 are 4 chunks
    run_id = create_run(limited)

    with pytest.raises(PlanTooLarge):
        steps.plan_run(limited, run_id)

    run = limited.ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == (
        "plan refused: pipeline orders_daily would plan 4 chunks (keys 1..2000 at "
        "chunk_size 500), over the limit of 3 chunks a run: use a chunk_size of at least "
        "667, or raise ETL_MAX_CHUNKS_PER_RUN"
    )
    assert run.chunk_count is None and not run.window
    assert limited.ledger.get_chunks(run_id) == []
    assert steps.plan_run(limited, run_id) is None  # a redelivery finds it ended


def test_a_plan_at_the_limit_is_recorded(seeded: Services) -> None:
    limited = with_max_chunks(seeded, 4)
    run_id = create_run(limited)

    pending = steps.plan_run(limited, run_id)

    assert pending is not None and len(pending) == 4
    assert limited.ledger.get_run(run_id).state is RunState.RUNNING


def test_a_retried_plan_keeps_its_chunks_even_over_a_lowered_limit(seeded: Services) -> None:
    run_id = create_run(seeded)
    steps.plan_run(seeded, run_id)
    limited = with_max_chunks(seeded, 1)

    again = steps.plan_run(limited, run_id)  # a redelivery: the plan is already recorded

    assert again is not None and len(again) == 4


def test_dispatch_hands_out_every_chunk_in_order_while_the_run_runs(seeded: Services) -> None:
    run_id = create_run(seeded)
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None

    dispatch = steps.ChunkDispatch(seeded, run_id, pending, batch_size=3)

    assert [chunk.index for chunk in dispatch] == [0, 1, 2, 3]
    assert dispatch.sent == 4


@pytest.mark.parametrize("ended", [RunState.CANCELLED, RunState.FAILED])
def test_dispatch_stops_at_the_next_batch_once_the_run_is_cancelled_or_failed(
    seeded: Services, ended: RunState
) -> None:
    run_id = create_run(seeded)
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None
    dispatch = iter(steps.ChunkDispatch(seeded, run_id, pending, batch_size=2))
    handed_out = [next(dispatch).index, next(dispatch).index]  # the first batch

    assert seeded.ledger.move_run(run_id, ended)
    handed_out += [chunk.index for chunk in dispatch]

    assert handed_out == [0, 1]


def test_dispatch_keeps_going_when_the_run_cannot_be_read(seeded: Services) -> None:
    run_id = create_run(seeded)
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None

    # A run id the ledger does not know: every read between batches fails.
    dispatch = steps.ChunkDispatch(seeded, "no-such-run", pending, batch_size=1)

    assert [chunk.index for chunk in dispatch] == [0, 1, 2, 3]
