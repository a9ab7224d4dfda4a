"""The reconciler: finishes runs whose messages were lost and fails runs past their
deadline, from the ledger alone (losing the result backend never loses a run)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from etl.domain.runs import ChunkState, RunState
from etl.domain.task_messages import TASK_COMMIT_RUN, TASK_PLAN_RUN
from etl.pipelines import UnknownPipeline, get_pipeline
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService


@dataclass(frozen=True)
class Reconciled:
    """What one pass did: dead letters recorded, and one line per run acted on."""

    dead_letters_recorded: int
    actions: list[str]


def sync_and_reconcile(
    dead_letters: DeadLetterService,
    runs: RunService,
    *,
    now: datetime,
    stale_after_s: int,
    deadline_s: int,
) -> Reconciled:
    """One pass of the reconciler (the periodic task and ``etl reconcile``): record
    what the dead-letter queues hold first, so the runs their messages left undone are
    failed by it with the reason, then finish or fail the runs still stuck."""
    recorded = dead_letters.sync()
    actions = reconcile(runs, now=now, stale_after_s=stale_after_s, deadline_s=deadline_s)
    return Reconciled(recorded, actions)


def reconcile(runs: RunService, *, now: datetime, stale_after_s: int, deadline_s: int) -> list[str]:
    """Look at every unfinished run once; returns what was done, one line each.

    - past its deadline: failed, with the number of chunks that did not finish (a run
      already committing is not failed: its commit may be writing _SUCCESS; it is sent
      its commit again instead, below);
    - every chunk done but no commit for ``stale_after_s`` (the worker of the last chunk
      died between recording it and claiming the commit): commit_run is sent again;
    - chunks pending, none running, nothing moving for that long (their messages were
      lost): plan_run again, which dispatches the unfinished chunks and a commit;
    - committing for that long (the commit crashed, or the commit message the last
      chunk sent was lost): commit_run is sent again;
    - planning for that long (the plan message was lost): plan_run again;
    - queued for that long with a free place (see ``max_active_runs``): plan_run again.
    Sending again is safe: every step skips what the ledger shows as done.
    """
    ledger, enqueue = runs.ledger, runs.enqueue
    actions = []
    stale = timedelta(seconds=stale_after_s)
    for run in ledger.active_runs():
        idle = now - ledger.last_activity(run.id)
        # A run counts from its start (a retried run from its retry: reopen_run restarts
        # started_at); a queued run waiting for a place has not started.
        overdue = run.started_at is not None and now - run.started_at > timedelta(
            seconds=deadline_s
        )
        if overdue and run.state is not RunState.COMMITTING:
            counts = ledger.chunk_counts(run.id)
            unfinished = sum(n for state, n in counts.items() if state is not ChunkState.DONE)
            reason = f"deadline exceeded: still {run.state} after {deadline_s} s" + (
                f" with {unfinished} chunks unfinished" if run.chunk_count else ""
            )
            [ending] = runs.end_runs([run.id], RunState.FAILED, reason)
            if ending.moved:
                actions.append(f"failed run {run.id}: {reason}")
            continue
        if idle < stale:
            continue
        if run.state is RunState.RUNNING:
            counts = ledger.chunk_counts(run.id)
            if counts[ChunkState.DONE] == run.chunk_count:
                enqueue(TASK_COMMIT_RUN, [run.id])
                actions.append(f"sent commit for run {run.id}: all chunks done, no commit")
            elif counts[ChunkState.RUNNING] == 0 and counts[ChunkState.PENDING] > 0:
                # Nothing has moved for a while and no chunk is being worked on: their
                # messages were lost (a purged queue, a broker that lost them). plan_run
                # on a running run publishes its unfinished chunks again.
                enqueue(TASK_PLAN_RUN, [run.id])
                actions.append(
                    f"sent plan for run {run.id}: {counts[ChunkState.PENDING]} chunks "
                    "pending and none running"
                )
        elif run.state is RunState.COMMITTING:
            enqueue(TASK_COMMIT_RUN, [run.id])
            actions.append(f"sent commit for run {run.id}: stuck committing")
        elif run.state is RunState.PLANNING:
            enqueue(TASK_PLAN_RUN, [run.id])
            actions.append(f"sent plan for run {run.id}: stuck {run.state}")
    # Queued runs: their plan message was lost, or they wait for a place that a run
    # freed without telling (its worker died). Only those with a place are sent.
    for pipeline in ledger.pipelines_with_queued_runs():
        limit = _max_active_runs(pipeline)
        with_a_place = set(ledger.runs_to_admit(pipeline, limit))
        for run in ledger.active_runs():
            if run.pipeline != pipeline or run.state is not RunState.QUEUED:
                continue
            unlimited = limit is None and run.backfill_id is None
            if (unlimited or run.id in with_a_place) and now - ledger.last_activity(
                run.id
            ) >= stale:
                enqueue(TASK_PLAN_RUN, [run.id])
                actions.append(f"sent plan for run {run.id}: queued with a free place")
    return actions


def _max_active_runs(pipeline_name: str) -> int | None:
    try:
        return get_pipeline(pipeline_name).max_active_runs
    except UnknownPipeline:  # a pipeline removed from the code: nothing limits it
        return None
