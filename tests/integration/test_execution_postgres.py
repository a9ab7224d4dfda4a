"""The steps of a run on the real adapters: PostgreSQL (ledger and source, the COPY
path), moto's S3 server (ETags, HEAD, listings), a recording enqueue. What the steps
decide is unit tested on the fakes (tests/unit/test_execution.py); this checks the
adapters hold up their end."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from sqlalchemy import update

from etl.adapters.ledger import Ledger
from etl.adapters.ledger.schema import chunks_table
from etl.bootstrap import Services
from etl.domain.layout import manifest_key, success_key
from etl.domain.runs import ChunkState, Run, RunState
from etl.service import execution as steps
from etl.service.lifecycle import RunService

from builders import chunk_key, keys_under, new_run, prefix_of, read_json_lines_gzip, with_orders
from fakes import RecordingEnqueue
from support import expected_records

SEEDED = 2000
CHUNK_SIZE = 500  # four chunks


@pytest.fixture
def seeded(services: Services) -> Services:
    return with_orders(services, SEEDED)


def planned_run(services: Services) -> str:
    run_id = new_run(services.ledger, params={"chunk_size": CHUNK_SIZE})
    pending = steps.plan_run(services, run_id)
    assert pending is not None and len(pending) == 4
    return run_id


def run_every_chunk(services: Services, run_id: str) -> list[dict[str, Any] | None]:
    return [steps.transform_chunk(services, run_id, index) for index in range(4)]


def test_a_run_is_committed_with_every_row_exactly_once(seeded: Services) -> None:
    run_id = planned_run(seeded)
    results = run_every_chunk(seeded, run_id)

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    manifest = json.loads(seeded.parts.get_bytes(run.manifest_key or ""))
    assert manifest["parts"] == results
    found = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(seeded.parts.get_bytes(part["key"]))
    ]
    expected, rejected = expected_records(seeded, run.pipeline)
    assert found == expected and rejected == run.rows_rejected
    prefix = prefix_of(seeded, run_id)
    assert set(keys_under(seeded.parts, prefix + "/")) == {
        *(part["key"] for part in manifest["parts"]),
        manifest_key(prefix),
        success_key(prefix),
    }


def test_commit_refuses_a_missing_part_and_a_retry_repairs_it(seeded: Services) -> None:
    run_id = planned_run(seeded)
    run_every_chunk(seeded, run_id)
    lost = chunk_key(seeded, run_id, 2)
    seeded.parts.delete_keys([lost])

    failed = steps.commit_run(seeded, run_id)
    assert failed.state is RunState.FAILED
    assert failed.reason is not None and "part of chunk 2 is missing" in failed.reason
    assert seeded.parts.part_metadata(success_key(prefix_of(seeded, run_id))) is None

    RunService(seeded.ledger, RecordingEnqueue()).retry_run(run_id)
    pending = steps.plan_run(seeded, run_id)
    assert pending is not None and [chunk.index for chunk in pending] == [2]
    steps.transform_chunk(seeded, run_id, 2)

    assert steps.commit_run(seeded, run_id).state is RunState.SUCCEEDED
    assert seeded.parts.part_metadata(lost) is not None


def test_commit_catches_same_size_tampering_by_the_etag_of_one_listing(
    seeded: Services,
) -> None:
    run_id = planned_run(seeded)
    run_every_chunk(seeded, run_id)
    assert seeded.ledger.get_chunk(run_id, 2).etag  # kept from reading the part back
    key = chunk_key(seeded, run_id, 2)
    original = seeded.parts.get_bytes(key)
    head = seeded.parts.client.head_object(Bucket=seeded.parts.bucket, Key=key)
    seeded.parts.client.put_object(
        Bucket=seeded.parts.bucket,
        Key=key,
        Body=bytes(reversed(original)),
        Metadata=head["Metadata"],
    )

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "part of chunk 2 differs" in run.reason
    assert seeded.ledger.get_chunk(run_id, 2).state is ChunkState.FAILED


def test_a_part_recorded_without_an_etag_is_checked_by_its_sha256(seeded: Services) -> None:
    run_id = planned_run(seeded)
    run_every_chunk(seeded, run_id)
    with seeded.ledger.engine.begin() as conn:  # as a ledger migrated from version 3 holds it
        conn.execute(update(chunks_table).where(chunks_table.c.run_id == run_id).values(etag=None))
    key = chunk_key(seeded, run_id, 0)
    seeded.parts.client.put_object(
        Bucket=seeded.parts.bucket,
        Key=key,
        Body=bytes(reversed(seeded.parts.get_bytes(key))),
        Metadata={"sha256": "0" * 64},
    )

    run = steps.commit_run(seeded, run_id)

    assert run.state is RunState.FAILED
    assert run.reason is not None and "part of chunk 0 differs" in run.reason


def test_after_a_cancel_no_chunk_is_written_and_nothing_is_committed(seeded: Services) -> None:
    run_id = planned_run(seeded)
    done = steps.transform_chunk(seeded, run_id, 0)
    assert done is not None
    RunService(seeded.ledger, RecordingEnqueue()).cancel_run(run_id)

    assert steps.transform_chunk(seeded, run_id, 1) is None
    committed = steps.commit_run(seeded, run_id)

    assert committed.state is RunState.CANCELLED and committed.manifest_key is None
    assert keys_under(seeded.parts, prefix_of(seeded, run_id) + "/") == [done["key"]]


def test_a_run_failed_while_it_commits_has_its_manifest_and_success_withdrawn(
    seeded: Services,
) -> None:
    class FailedByATwinMidCommit(Ledger):
        """Another process failing the run after the markers are written and before
        the ledger moves (a twin delivery of the commit giving up)."""

        def succeed_run(self, run: Run, **fields: Any) -> bool:
            self.fail_run(run.id, "commit failed: retries exhausted")
            return super().succeed_run(run, **fields)

    run_id = planned_run(seeded)
    run_every_chunk(seeded, run_id)
    racing = dataclasses.replace(seeded, ledger=FailedByATwinMidCommit(seeded.ledger.engine))

    final = steps.commit_run(racing, run_id)

    assert (final.state, final.reason) == (RunState.FAILED, "commit failed: retries exhausted")
    keys = keys_under(seeded.parts, prefix_of(seeded, run_id))
    assert keys and all("/part-" in key for key in keys)  # no manifest, no _SUCCESS
