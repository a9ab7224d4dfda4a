"""Admission: which queued runs may start now, under a pipeline's ``max_active_runs``
and each backfill's ``max_active``.

Pure: the ledger counts the active runs and reads the queue under its lock, then asks
here which runs get a place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A queued run, as admission sees it."""

    run_id: str
    backfill_id: str | None = None


def admissible(
    queued: Sequence[Candidate],
    *,
    active: Mapping[str | None, int],
    pipeline_limit: int | None,
    backfill_limits: Mapping[str, int],
) -> list[str]:
    """The ids of the queued runs that have a place now, in queue order.

    ``active``: the pipeline's active runs by backfill id (None: runs of no backfill).
    ``pipeline_limit``: the pipeline's max_active_runs (None: no limit).
    ``backfill_limits``: max_active of each backfill a queued run belongs to.
    A run is admitted if its pipeline has a free place and, for a backfill's run, its
    backfill has one; each admitted run takes its places before the next is looked at.
    Once the pipeline is full, no later run is admitted.
    """
    taken = dict(active)
    room = None if pipeline_limit is None else pipeline_limit - sum(active.values())
    chosen = []
    for run in queued:
        if room is not None and room <= 0:
            break
        if run.backfill_id is not None:
            if taken.get(run.backfill_id, 0) >= backfill_limits[run.backfill_id]:
                continue
            taken[run.backfill_id] = taken.get(run.backfill_id, 0) + 1
        chosen.append(run.run_id)
        if room is not None:
            room -= 1
    return chosen


def waits_for_a_place(run: Candidate, pipeline_limit: int | None) -> bool:
    """True if a limit can hold the run back; a run nothing limits is planned at once
    (its plan message is already on its way) and never waits in the queue."""
    return pipeline_limit is not None or run.backfill_id is not None
