"""Chunks on any sortable key with the real SqlSource on SQLite (the embedded mode's
source): a sparse integer key planned even in rows, and text, UUID and timestamp keys
read once per row, through the steps of a run (plan, each chunk, commit). The same on
PostgreSQL: tests/integration/test_chunk_keys_postgres.py."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from key_pipelines import (
    SPARSE_IDS,
    SPARSE_PIPELINE,
    TEXT_KEYS,
    TEXT_PIPELINE,
    TIME_KEYS,
    TIME_PIPELINE,
    UUID_KEYS,
    UUID_PIPELINE,
    seed_text_keys,
    seed_time_keys,
    seed_uuid_keys,
)
from sqlalchemy import Engine, Table

from etl.adapters.db import replace_table
from etl.bootstrap import Services
from etl.domain.runs import Chunk, RunState
from etl.pipelines import PIPELINES, Pipeline
from etl.service import execution as steps

from builders import new_run, read_json_lines_gzip


def run_to_the_end(
    services: Services, monkeypatch: pytest.MonkeyPatch, pipeline: Pipeline, chunk_size: int
) -> tuple[list[int], list[Chunk]]:
    """A run of ``pipeline`` planned, transformed and committed: the row numbers its parts
    hold, and its chunks."""
    monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)
    run_id = new_run(services.ledger, pipeline=pipeline.name, params={"chunk_size": chunk_size})
    for chunk in steps.plan_run(services, run_id) or []:
        steps.transform_chunk(services, run_id, chunk.index)
    run = steps.commit_run(services, run_id)
    assert run.state is RunState.SUCCEEDED, run.reason
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    numbers = [
        record["row_no"]
        for part in manifest["parts"]
        for record in read_json_lines_gzip(services.parts.get_bytes(part["key"]))
    ]
    return numbers, services.ledger.get_chunks(run_id)


def test_a_sparse_key_is_planned_even_in_rows_on_sqlite(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000 ids, then 9,000 a million further on: chunks of 1,000 keys would leave most
    # of the range empty and put 1,000 rows in the first chunk.
    ids = [*range(1, 1_001), *range(1_000_000, 1_009_000)]
    replace_table(services.source_engine, SPARSE_IDS, ((key, n) for n, key in enumerate(ids)))

    numbers, chunks = run_to_the_end(services, monkeypatch, SPARSE_PIPELINE, 1_500)

    assert sorted(numbers) == list(range(len(ids)))
    sizes = [chunk.rows for chunk in chunks]
    assert len(sizes) == 7 and set(sizes) == {1_428, 1_429}  # 10,000 rows shared by 7
    assert [chunk.key_lo for chunk in chunks[:2]] == [1, 1_000_429]


SEEDS: list[tuple[Pipeline, Table, Callable[[Engine], int]]] = [
    (TEXT_PIPELINE, TEXT_KEYS, lambda engine: seed_text_keys(engine, 3_000)),
    (UUID_PIPELINE, UUID_KEYS, lambda engine: seed_uuid_keys(engine, 3_000)),
    (TIME_PIPELINE, TIME_KEYS, lambda engine: seed_time_keys(engine, 3_000)),
]


@pytest.mark.parametrize(("pipeline", "table", "seed"), SEEDS, ids=["text", "uuid", "timestamp"])
def test_a_key_of_any_sortable_type_is_read_once_per_row_on_sqlite(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    pipeline: Pipeline,
    table: Table,
    seed: Callable[[Engine], int],
) -> None:
    rows = seed(services.source_engine)

    numbers, chunks = run_to_the_end(services, monkeypatch, pipeline, 400)

    assert sorted(numbers) == list(range(rows)), "a row read twice or not at all"
    assert all(isinstance(chunk.key_lo, str) for chunk in chunks)
    assert all(chunk.rows for chunk in chunks) and 2 <= len(chunks) <= 8
    assert [chunk.key_hi_inclusive for chunk in chunks] == [False] * (len(chunks) - 1) + [True]
