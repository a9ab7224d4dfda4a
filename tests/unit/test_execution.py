"""The three steps of a run (plan, transform, commit) with cancel, retry and the chunk
attempt cap, on the in-memory fakes of their ports (tests/fakes.py): 2,000 sample
orders, chunks of 500. The same steps on PostgreSQL and S3: tests/integration/
test_execution.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from etl.domain.chunks import KeySpan
from etl.domain.errors import PlanTooLarge
from etl.domain.layout import manifest_key, success_key
from etl.domain.runs import ChunkState, Run, RunState
from etl.pipelines.orders import transform_orders
from etl.service import execution as steps

from builders import (
    PIPELINE,
    as_read,
    chunk_key,
    fake_services,
    keys_under,
    new_run,
    prefix_of,
    read_json_lines_gzip,
)
from fakes import FakeLedger, FakeServices, ListSource

SEEDED = 2000
CHUNK_SIZE = 500  # four chunks


def create_run(services: FakeServices, params: dict[str, Any] | None = None) -> str:
    return new_run(services.ledger, params={"chunk_size": CHUNK_SIZE} if params is None else params)


def planned_run(services: FakeServices) -> str:
    run_id = create_run(services)
    pending = steps.plan_run(services, run_id)
    assert pending is not None and len(pending) == 4
    return run_id


def run_every_chunk(services: FakeServices, run_id: str) -> list[dict[str, Any] | None]:
    return [
        steps.transform_chunk(services, run_id, c.index) for c in services.ledger.get_chunks(run_id)
    ]


def transformed_source(services: FakeServices) -> tuple[list[dict[str, Any]], int]:
    rows = sorted(services.sources[PIPELINE].rows, key=lambda row: row["id"])
    result = transform_orders(rows)
    return as_read(result.records), len(result.rejections)


# -- plan ----------------------------------------------------------------------------------


def test_plan_run_records_fixed_chunks_and_starts_the_run(fakes: FakeServices) -> None:
    run_id = create_run(fakes)

    pending = steps.plan_run(fakes, run_id)

    assert pending is not None
    assert [(c.index, c.key_lo, c.key_hi, c.key_hi_inclusive, c.state) for c in pending] == [
        (0, 1, 501, False, ChunkState.PENDING),
        (1, 501, 1001, False, ChunkState.PENDING),
        (2, 1001, 1501, False, ChunkState.PENDING),
        (3, 1501, SEEDED, True, ChunkState.PENDING),  # up to the largest key, included
    ]
    run = fakes.ledger.get_run(run_id)
    assert run.state is RunState.RUNNING
    assert run.chunk_count == 4
    assert run.window is not None
    assert run.window.as_dict() == {"key_column": "id", "key_min": 1, "key_max": SEEDED}


def test_plan_run_again_returns_the_unfinished_chunks_of_the_same_plan(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    steps.transform_chunk(fakes, run_id, 1)

    again = steps.plan_run(fakes, run_id)

    assert again is not None and [c.index for c in again] == [0, 2, 3]
    assert fakes.ledger.get_run(run_id).chunk_count == 4


def test_without_a_chunk_size_parameter_the_pipelines_chunk_size_is_used(
    fakes: FakeServices,
) -> None:
    pending = steps.plan_run(fakes, create_run(fakes, params={}))
    assert pending is not None
    assert [(c.key_lo, c.key_hi, c.key_hi_inclusive) for c in pending] == [(1, SEEDED, True)]


def test_a_plan_over_the_limit_records_nothing_and_fails_the_run_with_the_reason() -> None:
    limited = fake_services(rows=SEEDED, max_chunks_per_run=3)  # 4 chunks at 500
    run_id = create_run(limited)

    with pytest.raises(PlanTooLarge):
        steps.plan_run(limited, run_id)

    run = limited.ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason == (
        "plan refused: pipeline orders_daily would plan 4 chunks (2,000 rows at "
        "chunk_size 500), over the limit of 3 chunks a run: use a chunk_size of at least "
        "667, or raise ETL_MAX_CHUNKS_PER_RUN"
    )
    assert run.chunk_count is None and not run.window
    assert limited.ledger.get_chunks(run_id) == []
    assert steps.plan_run(limited, run_id) is None  # a redelivery finds it ended


def test_a_plan_at_the_limit_is_recorded() -> None:
    limited = fake_services(rows=SEEDED, max_chunks_per_run=4)
    pending = steps.plan_run(limited, create_run(limited))
    assert pending is not None and len(pending) == 4


def test_a_retried_plan_keeps_its_chunks_even_over_a_lowered_limit(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    limited = dataclasses.replace(
        fakes, settings=fakes.settings.model_copy(update={"max_chunks_per_run": 1})
    )

    again = steps.plan_run(limited, run_id)  # a redelivery: the plan is already recorded

    assert again is not None and len(again) == 4


def test_an_empty_source_plans_no_chunks_and_commits_an_empty_manifest() -> None:
    services = fake_services(rows=0)
    run_id = create_run(services)

    assert steps.plan_run(services, run_id) == []
    run = steps.commit_run(services, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    assert (run.chunk_count, run.rows_written, run.rows_rejected) == (0, 0, 0)
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    assert (manifest["parts"], manifest["total_rows"]) == ([], 0)
    assert manifest["window"] == {"key_column": "id", "key_min": None, "key_max": None}
    assert services.parts.part_metadata(success_key(prefix_of(services, run_id))) is not None


# -- dispatch ------------------------------------------------------------------------------


def test_dispatch_hands_out_every_chunk_in_order_in_batches_while_the_run_runs(
    fakes: FakeServices,
) -> None:
    run_id = create_run(fakes)
    pending = steps.plan_run(fakes, run_id)
    assert pending is not None

    dispatch = steps.ChunkDispatch(fakes, run_id, pending, batch_size=3)

    assert [[chunk.index for chunk in batch] for batch in dispatch.batches()] == [[0, 1, 2], [3]]
    assert dispatch.sent == 4
    whole = steps.ChunkDispatch(fakes, run_id, pending)
    assert [chunk.index for batch in whole.batches() for chunk in batch] == [0, 1, 2, 3]


@pytest.mark.parametrize("ended", [RunState.CANCELLED, RunState.FAILED])
def test_dispatch_stops_at_the_next_batch_once_the_run_is_cancelled_or_failed(
    fakes: FakeServices, ended: RunState
) -> None:
    run_id = create_run(fakes)
    pending = steps.plan_run(fakes, run_id)
    assert pending is not None
    dispatch = steps.ChunkDispatch(fakes, run_id, pending, batch_size=2)
    batches = dispatch.batches()
    first = next(batches)

    assert fakes.ledger.move_run(run_id, ended)

    assert [chunk.index for chunk in first] == [0, 1]
    assert list(batches) == []
    assert dispatch.sent == 2


def test_dispatch_keeps_going_when_the_run_cannot_be_read(fakes: FakeServices) -> None:
    run_id = create_run(fakes)
    pending = steps.plan_run(fakes, run_id)
    assert pending is not None

    # A run id the ledger does not know: every read between batches fails.
    dispatch = steps.ChunkDispatch(fakes, "no-such-run", pending, batch_size=1)

    assert [chunk.index for batch in dispatch.batches() for chunk in batch] == [0, 1, 2, 3]


# -- transform and commit ------------------------------------------------------------------


def test_a_run_is_transformed_and_committed_with_every_row_exactly_once(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    results = run_every_chunk(fakes, run_id)

    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    prefix = prefix_of(fakes, run_id)
    assert run.manifest_key == manifest_key(prefix)
    manifest = json.loads(fakes.parts.get_bytes(run.manifest_key))
    assert [part["key"] for part in manifest["parts"]] == [
        chunk_key(fakes, run_id, index) for index in range(4)
    ]
    assert manifest["parts"] == results
    assert (manifest["total_rows"], manifest["rejected_rows"]) == (
        run.rows_written,
        run.rows_rejected,
    )
    assert run.rows_written + run.rows_rejected == SEEDED  # type: ignore[operator]
    assert sum(manifest["rejected_by_reason"].values()) == run.rows_rejected
    assert fakes.parts.get_bytes(success_key(prefix)) == b""

    found: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        data = fakes.parts.get_bytes(part["key"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (part["bytes"], part["sha256"])
        records = read_json_lines_gzip(data)
        assert len(records) == part["rows"]
        found.extend(records)
    expected, rejected = transformed_source(fakes)
    assert found == expected
    assert rejected == run.rows_rejected
    assert set(keys_under(fakes.parts, prefix + "/")) == {
        *(part["key"] for part in manifest["parts"]),
        manifest_key(prefix),
        success_key(prefix),
    }


def test_a_chunk_transformed_twice_is_written_once_with_the_same_result(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    first = steps.transform_chunk(fakes, run_id, 2)
    assert first is not None
    written = fakes.parts.get_bytes(first["key"])

    second = steps.transform_chunk(fakes, run_id, 2)

    assert second == first
    assert fakes.parts.get_bytes(first["key"]) == written
    assert fakes.ledger.get_chunk(run_id, 2).attempts == 1
    assert first["sha256"] == hashlib.sha256(written).hexdigest()


def test_a_chunk_left_running_by_a_lost_worker_is_redone_with_the_same_bytes(
    fakes: FakeServices,
) -> None:
    first_run, second_run = planned_run(fakes), planned_run(fakes)
    clean = steps.transform_chunk(fakes, first_run, 0)
    fakes.ledger.start_chunk(second_run, 0)  # the attempt a killed worker never finished

    redelivered = steps.transform_chunk(fakes, second_run, 0)

    chunk = fakes.ledger.get_chunk(second_run, 0)
    assert (chunk.state, chunk.attempts) == (ChunkState.DONE, 2)
    assert clean is not None and redelivered is not None
    assert [redelivered[k] for k in ("rows", "bytes", "sha256")] == [
        clean[k] for k in ("rows", "bytes", "sha256")
    ]


def test_commit_fails_the_run_naming_a_chunk_whose_part_is_missing(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    lost = run_every_chunk(fakes, run_id)[2]
    assert lost is not None
    fakes.parts.delete_keys([lost["key"]])

    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "part of chunk 2 is missing" in run.reason
    assert run.manifest_key is None
    prefix = prefix_of(fakes, run_id)
    assert fakes.parts.part_metadata(manifest_key(prefix)) is None
    assert fakes.parts.part_metadata(success_key(prefix)) is None
    assert fakes.ledger.get_chunk(run_id, 2).state is ChunkState.FAILED  # to redo


def test_commit_catches_a_part_overwritten_with_other_bytes_of_the_same_size(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    results = run_every_chunk(fakes, run_id)
    assert results[1] is not None
    key = results[1]["key"]
    original = fakes.parts.get_bytes(key)
    # Same size, and the sha256 metadata left as it was: only the ETag tells.
    fakes.parts.put(key, bytes(reversed(original)), fakes.parts.objects[key].metadata)

    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "part of chunk 1 differs" in run.reason
    assert fakes.ledger.get_chunk(run_id, 1).state is ChunkState.FAILED


def test_a_part_recorded_before_etags_were_kept_is_checked_by_its_sha256(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    results = run_every_chunk(fakes, run_id)
    for (rid, index), chunk in list(fakes.ledger.chunks.items()):
        if rid == run_id:  # as a ledger migrated from version 3 holds it
            fakes.ledger.chunks[(rid, index)] = dataclasses.replace(chunk, etag=None)
    assert results[0] is not None
    key = results[0]["key"]
    fakes.parts.put(key, bytes(reversed(fakes.parts.get_bytes(key))), {"sha256": "0" * 64})

    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "part of chunk 0 differs" in run.reason


def test_commit_fails_the_run_naming_a_chunk_that_is_not_done(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    for index in (0, 1, 3):
        steps.transform_chunk(fakes, run_id, index)

    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "chunks not done: 2" in run.reason
    assert fakes.parts.part_metadata(success_key(prefix_of(fakes, run_id))) is None


def test_commit_of_a_run_that_already_ended_changes_nothing(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    run_every_chunk(fakes, run_id)
    committed = steps.commit_run(fakes, run_id)

    again = steps.commit_run(fakes, run_id)

    assert again.state is RunState.SUCCEEDED
    assert (again.manifest_key, again.finished_at) == (
        committed.manifest_key,
        committed.finished_at,
    )


def test_a_run_failed_while_it_commits_has_its_manifest_and_success_withdrawn(
    fakes: FakeServices,
) -> None:
    class FailedByATwinMidCommit(FakeLedger):
        """Another process failing the run (a twin delivery of the commit giving up)
        after the markers are written and before the ledger moves."""

        def succeed_run(self, run: Run, **fields: Any) -> bool:
            self.fail_run(run.id, "commit failed: retries exhausted")
            return super().succeed_run(run, **fields)

    racing = dataclasses.replace(fakes, ledger=FailedByATwinMidCommit())
    run_id = planned_run(racing)
    run_every_chunk(racing, run_id)

    final = steps.commit_run(racing, run_id)

    assert (final.state, final.reason) == (RunState.FAILED, "commit failed: retries exhausted")
    keys = keys_under(racing.parts, prefix_of(racing, run_id))
    assert keys and all("/part-" in key for key in keys)  # no manifest, no _SUCCESS


# -- cancel --------------------------------------------------------------------------------


def test_after_a_cancel_no_chunk_is_written_and_nothing_is_committed(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    done = steps.transform_chunk(fakes, run_id, 0)
    assert done is not None
    fakes.runs.cancel_run(run_id)

    skipped = steps.transform_chunk(fakes, run_id, 1)
    committed = steps.commit_run(fakes, run_id)

    assert skipped is None
    chunk = fakes.ledger.get_chunk(run_id, 1)
    assert (chunk.state, chunk.attempts) == (ChunkState.PENDING, 0)
    assert (committed.state, committed.reason) == (RunState.CANCELLED, "cancelled by request")
    assert committed.manifest_key is None
    # The chunk done before the cancel keeps its part, which no manifest will name.
    assert keys_under(fakes.parts, prefix_of(fakes, run_id) + "/") == [done["key"]]
    assert steps.plan_run(fakes, run_id) is None
    assert fakes.ledger.get_run(run_id).state is RunState.CANCELLED


@pytest.mark.parametrize("ended", [RunState.CANCELLED, RunState.FAILED])
def test_a_chunk_of_a_run_that_ended_writes_nothing(fakes: FakeServices, ended: RunState) -> None:
    run_id = planned_run(fakes)
    fakes.runs.end_run(run_id, ended, "ended by the test")

    assert steps.transform_chunk(fakes, run_id, 0) is None

    assert keys_under(fakes.parts, prefix_of(fakes, run_id)) == []
    assert fakes.ledger.get_chunk(run_id, 0).state is ChunkState.PENDING


# -- retry and the attempt cap -------------------------------------------------------------


def test_a_retried_run_redoes_only_its_unfinished_chunks_and_commits_every_row(
    fakes: FakeServices,
) -> None:
    run_id = planned_run(fakes)
    first = steps.transform_chunk(fakes, run_id, 0)
    assert first is not None
    first_bytes = fakes.parts.get_bytes(first["key"])
    fakes.ledger.start_chunk(run_id, 1)
    fakes.ledger.fail_chunk(run_id, 1, "ValueError: poison row")
    fakes.runs.end_run(run_id, RunState.FAILED, "chunk 1 failed: ValueError: poison row")
    fakes.enqueue.calls.clear()

    fakes.runs.retry_run(run_id)
    pending = steps.plan_run(fakes, run_id)

    assert fakes.enqueue.calls == [("etl.plan_run", [run_id])]
    assert pending is not None
    assert [(c.index, c.state, c.attempts, c.error) for c in pending] == [
        (1, ChunkState.PENDING, 0, None),
        (2, ChunkState.PENDING, 0, None),
        (3, ChunkState.PENDING, 0, None),
    ]
    for chunk in pending:
        steps.transform_chunk(fakes, run_id, chunk.index)
    run = steps.commit_run(fakes, run_id)

    assert (run.state, run.reason, run.chunk_count) == (RunState.SUCCEEDED, None, 4)
    assert fakes.ledger.get_chunk(run_id, 0).attempts == 1  # chunk 0 was not redone
    assert fakes.parts.get_bytes(first["key"]) == first_bytes
    manifest = json.loads(fakes.parts.get_bytes(run.manifest_key or ""))
    found = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(fakes.parts.get_bytes(part["key"]))
    ]
    assert found == transformed_source(fakes)[0]
    assert run.rows_written == len(found)


def test_a_retry_repairs_a_part_the_commit_found_missing(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    run_every_chunk(fakes, run_id)
    lost = chunk_key(fakes, run_id, 2)
    fakes.parts.delete_keys([lost])
    assert steps.commit_run(fakes, run_id).state is RunState.FAILED

    fakes.runs.retry_run(run_id)
    pending = steps.plan_run(fakes, run_id)
    assert pending is not None and [chunk.index for chunk in pending] == [2]
    steps.transform_chunk(fakes, run_id, 2)
    run = steps.commit_run(fakes, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    assert fakes.parts.part_metadata(lost) is not None


def test_a_chunk_started_too_often_is_given_up_naming_the_chunk(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS):  # each a worker that died mid-chunk
        fakes.ledger.start_chunk(run_id, 2)

    with pytest.raises(steps.ChunkAttemptsExhausted, match=r"chunk 2 was started 11 times"):
        steps.transform_chunk(fakes, run_id, 2)

    chunk = fakes.ledger.get_chunk(run_id, 2)
    assert (chunk.state, chunk.attempts) == (ChunkState.RUNNING, steps.MAX_CHUNK_ATTEMPTS + 1)
    assert fakes.parts.part_metadata(chunk_key(fakes, run_id, 2)) is None


def test_a_chunk_on_its_last_allowed_attempt_is_still_transformed(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS - 1):
        fakes.ledger.start_chunk(run_id, 2)

    result = steps.transform_chunk(fakes, run_id, 2)

    assert result is not None and result["key"] == chunk_key(fakes, run_id, 2)
    chunk = fakes.ledger.get_chunk(run_id, 2)
    assert (chunk.state, chunk.attempts) == (ChunkState.DONE, steps.MAX_CHUNK_ATTEMPTS)


def test_a_retry_gives_an_exhausted_chunk_its_attempts_back(fakes: FakeServices) -> None:
    run_id = planned_run(fakes)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS):
        fakes.ledger.start_chunk(run_id, 2)
    with pytest.raises(steps.ChunkAttemptsExhausted) as caught:
        steps.transform_chunk(fakes, run_id, 2)
    fakes.ledger.fail_chunk(run_id, 2, str(caught.value))  # what the task's give-up does
    fakes.runs.end_run(run_id, RunState.FAILED, f"chunk 2 failed: {caught.value}")

    fakes.runs.retry_run(run_id)
    assert steps.plan_run(fakes, run_id) is not None

    assert steps.transform_chunk(fakes, run_id, 2) is not None
    chunk = fakes.ledger.get_chunk(run_id, 2)
    assert (chunk.state, chunk.attempts, chunk.error) == (ChunkState.DONE, 1, None)


def test_a_list_source_reads_only_its_key_range() -> None:
    # The fake source itself: ranges are half open (or closed) and in key order.
    source = ListSource([{"id": k} for k in (5, 1, 3, 2, 4)])
    assert source.key_span() == KeySpan(5, 1, 5)
    assert source.key_boundaries(2, KeySpan(5, 1, 5)) == [1, 3, 5]  # 3 chunks: 2, 2, 1 rows
    assert list(source.read_range(2, 5, 2)) == [[{"id": 2}, {"id": 3}], [{"id": 4}]]
    assert list(source.read_range(4, 5, 2, key_hi_inclusive=True)) == [[{"id": 4}, {"id": 5}]]


def test_a_sparse_key_is_planned_in_chunks_even_in_rows() -> None:
    # Ids 1..100 and 100,000..101,899: 2,000 rows, four chunks of 500 rows, where chunks
    # of 500 keys would have made 203 chunks, most of them empty.
    services = fake_services(rows=SEEDED)
    rows = services.sources[PIPELINE].rows
    for row, new_id in zip(rows, [*range(1, 101), *range(100_000, 101_900)], strict=True):
        row["id"] = new_id
    run_id = create_run(services)

    pending = steps.plan_run(services, run_id)

    assert pending is not None
    assert [(c.key_lo, c.key_hi) for c in pending] == [
        (1, 100_400), (100_400, 100_900), (100_900, 101_400), (101_400, 101_899),
    ]  # fmt: skip
    results = run_every_chunk(services, run_id)
    assert [result["rows"] for result in results if result] == [
        len(transform_orders(rows[i : i + 500]).records) for i in range(0, SEEDED, 500)
    ]
    run = steps.commit_run(services, run_id)
    assert run.state is RunState.SUCCEEDED, run.reason
    assert run.rows_written == len(transformed_source(services)[0])
