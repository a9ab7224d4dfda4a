"""Cancel, retry and the chunk attempt cap through the steps, end to end without Celery:
SQLite ledger and source, moto's S3, a recording enqueue port."""

from __future__ import annotations

import dataclasses
import json
from datetime import date
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from etl.bootstrap import Services
from etl.demo import seed_orders
from etl.domain.layout import manifest_key, part_key, run_prefix, success_key
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.formats.encoding import read_json_lines_gzip
from etl.pipelines import get_pipeline
from etl.pipelines.orders import ORDERS_TABLE, transform_orders
from etl.service import execution as steps
from etl.service.lifecycle import RunService

from support import RecordingEnqueue

if TYPE_CHECKING:
    pass

SEEDED = 2000
CHUNK_SIZE = 500  # four chunks


@pytest.fixture
def seeded(services: Services) -> Services:
    assert seed_orders(services.source_engine, SEEDED) == SEEDED
    return services


def planned_run(services: Services) -> str:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        logical_date=date(2026, 11, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": CHUNK_SIZE},
    )
    pending = steps.plan_run(services, run.id)
    assert pending is not None and len(pending) == 4
    return run.id


def prefix_of(services: Services, run_id: str) -> str:
    run = services.ledger.get_run(run_id)
    output_path = get_pipeline(run.pipeline).output_path
    return run_prefix(services.settings.s3_prefix, output_path, run.logical_date, run.id)


def chunk_key(services: Services, run_id: str, index: int) -> str:
    return part_key(prefix_of(services, run_id), index, "jsonl.gz")


def transformed_source(services: Services) -> list[dict[str, Any]]:
    with services.source_engine.connect() as conn:
        rows = [
            dict(row)
            for row in conn.execute(select(ORDERS_TABLE).order_by(ORDERS_TABLE.c.id)).mappings()
        ]
    return transform_orders(rows).records


# -- cancel --------------------------------------------------------------------------------


def test_after_a_cancel_no_chunk_is_written_and_nothing_is_committed(seeded: Services) -> None:
    run_id = planned_run(seeded)
    done = steps.transform_chunk(seeded, run_id, 0)
    assert done is not None
    RunService(seeded.ledger, RecordingEnqueue()).cancel_run(run_id)

    skipped = steps.transform_chunk(seeded, run_id, 1)
    committed = steps.commit_run(seeded, run_id)

    assert skipped is None
    chunk = seeded.ledger.get_chunk(run_id, 1)
    assert (chunk.state, chunk.attempts) == (ChunkState.PENDING, 0)
    assert seeded.parts.part_metadata(chunk_key(seeded, run_id, 1)) is None
    assert committed.state is RunState.CANCELLED
    assert committed.reason == "cancelled by request"
    assert committed.manifest_key is None
    prefix = prefix_of(seeded, run_id)
    # The chunk done before the cancel keeps its part, which no manifest will name.
    assert seeded.parts.list_keys(prefix + "/") == [done["key"]]
    assert seeded.parts.part_metadata(manifest_key(prefix)) is None
    assert seeded.parts.part_metadata(success_key(prefix)) is None
    assert steps.plan_run(seeded, run_id) is None
    assert seeded.ledger.get_run(run_id).state is RunState.CANCELLED


# -- retry ---------------------------------------------------------------------------------


def test_a_retried_run_redoes_only_its_unfinished_chunks_and_commits_every_row(
    seeded: Services,
) -> None:
    run_id = planned_run(seeded)
    first = steps.transform_chunk(seeded, run_id, 0)
    assert first is not None
    first_bytes = seeded.parts.get_bytes(first["key"])
    seeded.ledger.start_chunk(run_id, 1)
    seeded.ledger.fail_chunk(run_id, 1, "ValueError: poison row")
    seeded.ledger.fail_run(run_id, "chunk 1 failed: ValueError: poison row")
    enqueue = RecordingEnqueue()

    RunService(seeded.ledger, enqueue).retry_run(run_id)
    pending = steps.plan_run(seeded, run_id)

    assert enqueue.calls == [("etl.plan_run", [run_id])]
    assert pending is not None
    assert [(c.index, c.state, c.attempts, c.error) for c in pending] == [
        (1, ChunkState.PENDING, 0, None),
        (2, ChunkState.PENDING, 0, None),
        (3, ChunkState.PENDING, 0, None),
    ]
    assert seeded.ledger.get_run(run_id).chunk_count == 4  # the same plan, not a new one

    for chunk in pending:
        steps.transform_chunk(seeded, run_id, chunk.index)
    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    assert run.reason is None
    assert seeded.ledger.get_chunk(run_id, 0).attempts == 1  # chunk 0 was not redone
    assert seeded.parts.get_bytes(first["key"]) == first_bytes
    manifest = json.loads(seeded.parts.get_bytes(run.manifest_key or ""))
    assert [part["key"] for part in manifest["parts"]] == [
        chunk_key(seeded, run_id, index) for index in range(4)
    ]
    found = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(seeded.parts.get_bytes(part["key"]))
    ]
    assert found == transformed_source(seeded)
    assert run.rows_written == len(found)
    assert seeded.parts.part_metadata(success_key(prefix_of(seeded, run_id))) is not None


# -- the attempt cap -----------------------------------------------------------------------


def test_a_chunk_started_too_often_is_given_up_naming_the_chunk(seeded: Services) -> None:
    run_id = planned_run(seeded)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS):  # each a worker that died mid-chunk
        seeded.ledger.start_chunk(run_id, 2)

    with pytest.raises(steps.ChunkAttemptsExhausted, match=r"chunk 2 was started 11 times"):
        steps.transform_chunk(seeded, run_id, 2)

    chunk = seeded.ledger.get_chunk(run_id, 2)
    assert chunk.state is not ChunkState.DONE
    assert chunk.attempts == steps.MAX_CHUNK_ATTEMPTS + 1
    assert seeded.parts.part_metadata(chunk_key(seeded, run_id, 2)) is None


def test_a_chunk_on_its_last_allowed_attempt_is_still_transformed(seeded: Services) -> None:
    run_id = planned_run(seeded)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS - 1):
        seeded.ledger.start_chunk(run_id, 2)

    result = steps.transform_chunk(seeded, run_id, 2)

    assert result is not None and result["key"] == chunk_key(seeded, run_id, 2)
    chunk = seeded.ledger.get_chunk(run_id, 2)
    assert (chunk.state, chunk.attempts) == (ChunkState.DONE, steps.MAX_CHUNK_ATTEMPTS)


def test_a_retry_gives_an_exhausted_chunk_its_attempts_back(seeded: Services) -> None:
    run_id = planned_run(seeded)
    for _ in range(steps.MAX_CHUNK_ATTEMPTS):
        seeded.ledger.start_chunk(run_id, 2)
    with pytest.raises(steps.ChunkAttemptsExhausted) as caught:
        steps.transform_chunk(seeded, run_id, 2)
    # What the transform task does when it gives up on a chunk.
    seeded.ledger.fail_chunk(run_id, 2, str(caught.value))
    seeded.ledger.fail_run(run_id, f"chunk 2 failed: {caught.value}")

    RunService(seeded.ledger, RecordingEnqueue()).retry_run(run_id)

    assert steps.transform_chunk(seeded, run_id, 2) is not None
    chunk = seeded.ledger.get_chunk(run_id, 2)
    assert (chunk.state, chunk.attempts, chunk.error) == (ChunkState.DONE, 1, None)


def test_a_retry_repairs_a_part_the_commit_found_missing(seeded: Services) -> None:
    run_id = planned_run(seeded)
    for index in range(4):
        steps.transform_chunk(seeded, run_id, index)
    lost = chunk_key(seeded, run_id, 2)
    seeded.parts.client.delete_object(Bucket=seeded.parts.bucket, Key=lost)

    failed = steps.commit_run(seeded, run_id)
    assert failed.state is RunState.FAILED
    assert failed.reason is not None and "part of chunk 2 is missing" in failed.reason
    assert seeded.ledger.get_chunk(run_id, 2).state is ChunkState.FAILED

    RunService(seeded.ledger, RecordingEnqueue()).retry_run(run_id)
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None and [chunk.index for chunk in pending] == [2]
    steps.transform_chunk(seeded, run_id, 2)
    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    assert seeded.parts.part_metadata(lost) is not None


def test_a_run_failed_while_it_commits_has_its_manifest_and_success_withdrawn(
    seeded: Services,
) -> None:
    from etl.adapters.ledger import Ledger

    class FailedByATwinMidCommit(Ledger):
        """Another process failing the run (a twin delivery of the commit giving up)
        after the markers are written and before the ledger moves. (A cancel cannot:
        a committing run is past cancelling.)"""

        def succeed_run(self, run: Run, **fields: Any) -> bool:
            self.fail_run(run.id, "commit failed: retries exhausted")
            return super().succeed_run(run, **fields)

    run_id = planned_run(seeded)
    services = seeded
    for chunk in services.ledger.get_chunks(run_id):
        steps.transform_chunk(services, run_id, chunk.index)
    racing = dataclasses.replace(services, ledger=FailedByATwinMidCommit(services.ledger.engine))

    final = steps.commit_run(racing, run_id)

    assert (final.state, final.reason) == (RunState.FAILED, "commit failed: retries exhausted")
    prefix = prefix_of(services, run_id)
    keys = services.parts.list_keys(prefix)
    assert keys and all("/part-" in key for key in keys)  # parts stay; no manifest, no _SUCCESS
