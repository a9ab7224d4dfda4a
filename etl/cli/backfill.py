"""``etl backfill``: one run per data interval over a range, at most N active at once."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pydantic import ValidationError

from etl.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    as_document,
    date_or_timestamp,
    describe_params_error,
    open_services,
    param,
    positive,
    reaching_broker,
)
from etl.cli.display import add_json_flag, count, print_json, print_table
from etl.cli.progress import ProgressLine, bar, clock
from etl.config import Settings
from etl.domain.backfills import Backfill, BackfillProgress, IntervalPlan, Reprocess
from etl.domain.runs import ACTIVE_RUN_STATES, ChunkState, Run, RunState
from etl.pipelines import interval_name


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    backfill = sub.add_parser(
        "backfill", help="run a pipeline once per data interval from --start to --end"
    )
    backfill.add_argument("pipeline", help="the pipeline's name (`etl pipelines` lists them)")
    backfill.add_argument(
        "--start",
        type=date_or_timestamp,
        required=True,
        help="first date YYYY-MM-DD (every interval of the days), or the ISO timestamp that "
        "starts the first interval",
    )
    backfill.add_argument(
        "--end",
        type=date_or_timestamp,
        required=True,
        help="last date (inclusive), or the timestamp that starts the last interval",
    )
    backfill.add_argument(
        "--max-active", type=positive, default=1, help="runs active at once (default 1)"
    )
    backfill.add_argument(
        "--reprocess",
        choices=[choice.value for choice in Reprocess],
        default=Reprocess.NONE.value,
        help="dates that already have a run: none (skip them, default), failed (redo "
        "failed or cancelled ones), all",
    )
    backfill.add_argument(
        "--param",
        type=param,
        action="append",
        default=[],
        metavar="K=V",
        help="a param for every run (a field of the pipeline's params); repeat for more",
    )
    backfill.add_argument(
        "--dry-run", action="store_true", help="print what would run and start nothing"
    )
    backfill.add_argument(
        "--no-wait", action="store_true", help="start the backfill and return at once"
    )
    backfill.add_argument(
        "--timeout", type=positive, default=24 * 3600, help="seconds to wait (default a day)"
    )
    add_json_flag(backfill)
    backfill.set_defaults(handler=cmd_backfill)


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from etl.service.backfills import start_backfill

    services = open_services(settings)
    try:
        with reaching_broker(settings):
            backfill, plans = start_backfill(
                services.runs,
                args.pipeline,
                start=args.start,
                end=args.end,
                max_active=args.max_active,
                reprocess=Reprocess(args.reprocess),
                params=dict(args.param),
                dry_run=args.dry_run,
            )
    except ValidationError as exc:
        raise CliError(describe_params_error(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not args.json:
        print_plans(plans, dry_run=args.dry_run)
    if backfill is None or args.no_wait:
        if args.json:
            print_json(backfill_document(backfill, plans, None))
        elif backfill is not None:
            print(started_line(backfill, plans))
        return EXIT_OK
    if not args.json:
        print(started_line(backfill, plans))
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    # With --json, stdout holds only the document: progress goes to stderr.
    line = ProgressLine(sys.stderr if args.json else sys.stdout)
    while True:
        runs = services.ledger.backfill_runs(backfill.id)
        chunks_done = {
            run.id: services.ledger.chunk_counts(run.id).get(ChunkState.DONE, 0)
            for run in runs
            if run.state in ACTIVE_RUN_STATES
        }
        progress = BackfillProgress.of(runs, chunks_done)
        text = progress_text(progress, time.monotonic() - started)
        line.show(text, " | ".join(text.split(" | ")[:5]))
        if progress.done:
            break
        if time.monotonic() > deadline:
            line.finish()
            raise CliError(f"backfill {backfill.id} still running after {args.timeout}s")
        time.sleep(0.5)
    line.finish()
    runs = services.ledger.backfill_runs(backfill.id)
    if args.json:
        print_json(backfill_document(backfill, plans, runs))
    else:
        print_table(
            ["INTERVAL", "STATE", "RUN ID", "ROWS", "REASON"],
            [
                [
                    interval_name(run.pipeline, run.interval),
                    run.state,
                    run.id,
                    run.rows_written,
                    run.reason,
                ]
                for run in runs
            ],
            right={"ROWS"},
        )
    return EXIT_OK if progress.succeeded else EXIT_FAILED


def started_line(backfill: Backfill, plans: list[IntervalPlan]) -> str:
    """``backfill ID started: N runs of PIPELINE, at most M active``."""
    return (
        f"backfill {backfill.id} started: {count(sum(p.run for p in plans))} runs of "
        f"{backfill.pipeline}, at most {backfill.max_active} active"
    )


def print_plans(plans: list[IntervalPlan], *, dry_run: bool) -> None:
    """One line per interval (its name: a date, or a finer interval's start): whether it
    runs, and why."""
    for plan in plans:
        verb = ("would run" if dry_run else "run") if plan.run else "skip"
        print(f"  {plan.name}  {verb:9}  {plan.reason}")


def backfill_document(
    backfill: Backfill | None, plans: list[IntervalPlan], runs: list[Run] | None
) -> dict[str, Any]:
    """What ``etl backfill --json`` prints: the backfill (null when nothing was started),
    the decision per interval, and once waited for, its runs."""
    document: dict[str, Any] = {
        "backfill": None if backfill is None else as_document(backfill),
        "intervals": [
            {
                "name": plan.name,
                "interval": plan.interval.as_dict(),
                "logical_date": plan.logical_date.isoformat(),
                "run": plan.run,
                "reason": plan.reason,
                "existing_run_id": plan.existing_run_id,
            }
            for plan in plans
        ],
    }
    if runs is not None:
        document["runs"] = [as_document(run) for run in runs]
        document["succeeded"] = all(run.state is RunState.SUCCEEDED for run in runs)
    return document


def progress_text(progress: BackfillProgress, elapsed_s: float) -> str:
    """``[######..........] 12/40 chunks | 3/10 runs ended (3 succeeded) | 2 active |
    5 queued | 1,234 rows | 29 rows/s | 0:42 | ETA 1:38``."""
    by_state = progress.by_state
    ended = progress.finished
    outcome = ", ".join(
        f"{by_state[state]} {state}"
        for state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
        if by_state.get(state)
    )
    active = sum(
        by_state.get(state, 0)
        for state in (RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING)
    )
    parts = [
        f"{bar(progress.chunks_done, progress.chunks_planned)} "
        f"{progress.chunks_done}/{progress.chunks_planned} chunks",
        f"{ended}/{progress.total} runs ended" + (f" ({outcome})" if outcome else ""),
        f"{active} active",
        f"{by_state.get(RunState.QUEUED, 0)} queued",
        f"{progress.rows_written:,} rows",
    ]
    if elapsed_s > 0 and progress.rows_written:
        parts.append(f"{progress.rows_written / elapsed_s:,.0f} rows/s")
    parts.append(clock(elapsed_s))
    if 0 < ended < progress.total:
        parts.append("ETA " + clock(elapsed_s / ended * (progress.total - ended)))
    return " | ".join(parts)
