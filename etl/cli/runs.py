"""``etl run``, ``etl status``, ``etl runs``, ``etl pipelines``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
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
    load_pipelines,
    open_services,
    param,
    positive,
    reaching_broker,
)
from etl.cli.display import add_json_flag, count, print_json, print_table
from etl.cli.progress import ProgressLine, run_progress
from etl.config import Settings
from etl.domain.runs import Chunk, ChunkState, Run, RunState
from etl.pipelines import explain_run, get_pipeline, interval_name


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    run = sub.add_parser("run", help="start a run of a pipeline")
    run.add_argument("pipeline", help="the pipeline's name (`etl pipelines` lists them)")
    run.add_argument(
        "--interval",
        "--date",
        dest="interval",
        type=date_or_timestamp,
        help="the run's data interval: its date YYYY-MM-DD (a daily pipeline) or the ISO "
        "timestamp that starts it (a finer one); default: the last interval that ended",
    )
    run.add_argument(
        "--param",
        type=param,
        action="append",
        default=[],
        metavar="K=V",
        help="a run param (a field of the pipeline's params, e.g. chunk_size=20000); repeat "
        "for more",
    )
    run.add_argument("--idempotency-key", help="repeat-safe key: the same key returns the same run")
    run.add_argument(
        "--wait", action="store_true", help="wait for the run to end; exit 0 only if it succeeded"
    )
    run.add_argument(
        "--timeout", type=positive, default=3600, help="seconds to wait (default 3600)"
    )
    add_json_flag(run)
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", help="show one run and its chunks")
    status.add_argument("run_id", help="the run's id")
    add_json_flag(status)
    status.set_defaults(handler=cmd_status)

    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--pipeline", help="only this pipeline's runs")
    runs.add_argument(
        "--state", choices=[state.value for state in RunState], help="only runs in this state"
    )
    runs.add_argument("--backfill", metavar="ID", help="the runs of one backfill, by date")
    runs.add_argument(
        "--limit", type=positive, default=20, help="at most this many, newest first (default 20)"
    )
    add_json_flag(runs)
    runs.set_defaults(handler=cmd_runs)

    pipelines = sub.add_parser("pipelines", help="list the registered pipelines")
    add_json_flag(pipelines)
    pipelines.set_defaults(handler=cmd_pipelines)

    retry = sub.add_parser("retry", help="re-run a failed run's unfinished chunks and commit it")
    retry.add_argument("run_id", help="the failed run's id")
    add_json_flag(retry)
    retry.set_defaults(handler=cmd_retry)

    cancel = sub.add_parser("cancel", help="stop a run: pending chunks skipped, nothing committed")
    target = cancel.add_mutually_exclusive_group(required=True)
    target.add_argument("run_id", nargs="?", help="the run's id")
    target.add_argument(
        "--backfill", metavar="ID", help="cancel every unfinished run of a backfill"
    )
    add_json_flag(cancel)
    cancel.set_defaults(handler=cmd_cancel)

    reconcile = sub.add_parser(
        "reconcile", help="finish runs whose commit was lost, fail runs past their deadline"
    )
    add_json_flag(reconcile)
    reconcile.set_defaults(handler=cmd_reconcile)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from etl.service.lifecycle import wait_for_run

    services = open_services(settings)
    try:
        # Refused before anything is recorded or sent if the bucket is missing (every
        # chunk would only be dead-lettered); a mistyped pipeline or param is named
        # first, without asking S3.
        get_pipeline(args.pipeline).validate_params(dict(args.param))
        refuse_without_bucket(settings)
        with reaching_broker(settings):
            run, created = services.runs.start_run(
                args.pipeline,
                interval=args.interval,
                params=dict(args.param),
                idempotency_key=args.idempotency_key,
            )
    except ValidationError as exc:
        raise CliError(describe_params_error(exc), EXIT_USAGE) from None
    except ValueError as exc:  # an interval this pipeline does not have
        raise CliError(str(exc), EXIT_USAGE) from None
    if not args.json:
        verb = "started" if created else "already exists:"
        named = interval_name(run.pipeline, run.interval)
        print(f"run {run.id} {verb} {run.pipeline} for {named} ({run.state})")
    if not args.wait:
        if args.json:
            print_json(run_document(run, created=created))
        return EXIT_OK
    # With --json, stdout holds only the document: progress goes to stderr.
    line = ProgressLine(sys.stderr if args.json else sys.stdout)
    began = time.monotonic()

    def show(current: Run, counts: dict[ChunkState, int]) -> None:
        chunks = services.ledger.get_chunks(current.id)
        rows = sum((c.rows or 0) + (c.rows_rejected or 0) for c in chunks)
        text, changed = run_progress(
            current.state.value,
            counts[ChunkState.DONE],
            current.chunk_count,
            rows,
            time.monotonic() - began,
        )
        line.show(text, changed)

    try:
        final = wait_for_run(services.ledger, run.id, timeout_s=args.timeout, on_progress=show)
    except TimeoutError as exc:
        line.finish()
        raise CliError(str(exc)) from None
    line.finish()
    chunks = services.ledger.get_chunks(final.id)
    if args.json:
        print_json(run_document(final, chunks, created=created))
    else:
        print_run(final, chunks)
    return EXIT_OK if final.state is RunState.SUCCEEDED else EXIT_FAILED


def refuse_without_bucket(settings: Settings) -> None:
    """One line with the fix, and no run, if the bucket does not exist. S3 that cannot
    say (this host may have no S3 settings: the workers write it) is no reason to refuse."""
    from etl.adapters.probe import SettingsProbes
    from etl.service.checks import bucket_refusal

    refusal = bucket_refusal(SettingsProbes(settings), warn=False)
    if refusal is not None:
        raise CliError(f"no run started: {refusal.sentence()}")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    services = open_services(settings)
    run = services.ledger.get_run(args.run_id)
    chunks = services.ledger.get_chunks(run.id)
    if args.json:
        print_json(run_document(run, chunks))
    else:
        print_run(run, chunks, with_chunks=True)
    return EXIT_OK


def run_document(run: Run, chunks: list[Chunk] | None = None, **extra: Any) -> dict[str, Any]:
    """A run as ``--json`` prints it (``etl status``'s document): its fields, ``extra``,
    and its chunks when given."""
    document = {**as_document(run), **extra}
    if chunks is not None:
        document["chunks"] = [as_document(chunk) for chunk in chunks]
    return document


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    services = open_services(settings)
    state = RunState(args.state) if args.state else None
    if args.backfill:
        runs = services.ledger.backfill_runs(args.backfill)
    else:
        runs = services.ledger.list_runs(pipeline=args.pipeline, state=state, limit=args.limit)
    if args.json:
        print_json([as_document(run) for run in runs])
        return EXIT_OK
    print_table(
        ["RUN ID", "PIPELINE", "DATE", "STATE", "ROWS", "REJECTED", "CREATED"],
        [
            [
                run.id,
                run.pipeline,
                run.logical_date,
                run.state,
                run.rows_written,
                run.rows_rejected,
                run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            ]
            for run in runs
        ],
        right={"ROWS", "REJECTED"},
    )
    return EXIT_OK


def cmd_pipelines(args: argparse.Namespace, settings: Settings) -> int:
    from etl.domain.schedules import summarize
    from etl.pipelines import PIPELINES

    load_pipelines(settings)

    moment = datetime.now(UTC)
    listed = []
    for pipeline in PIPELINES.values():
        upcoming = pipeline.next_run_at(moment)
        next_interval = pipeline.next_interval(moment)
        listed.append(
            {
                "name": pipeline.name,
                "schedule": summarize(pipeline.schedule),
                "next_run_at": upcoming.isoformat(timespec="seconds") if upcoming else None,
                # What the next run covers, as its pipeline names it.
                "next_interval": pipeline.grain.name(next_interval) if next_interval else None,
                "mode": str(pipeline.source.mode),
                "interval": str(pipeline.grain.kind),
                "output_format": pipeline.output_format,
                "description": pipeline.description,
            }
        )
    if args.json:
        print_json(listed)
        return EXIT_OK
    print_table(
        ["PIPELINE", "SCHEDULE", "NEXT RUN", "FOR", "READS", "FORMAT", "DESCRIPTION"],
        [
            [
                entry["name"],
                entry["schedule"],
                entry["next_run_at"] or "-",
                entry["next_interval"] or "-",
                f"{entry['mode']}/{entry['interval']}",
                entry["output_format"],
                entry["description"],
            ]
            for entry in listed
        ],
    )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    services = open_services(settings)
    with reaching_broker(settings):
        run = services.runs.retry_run(args.run_id)
    if args.json:
        print_json(run_document(run))
    else:
        print(f"run {run.id} retrying ({run.state})")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    runs_service = open_services(settings).runs
    if args.backfill:
        from etl.service.backfills import cancel_backfill

        with reaching_broker(settings):
            runs = cancel_backfill(runs_service, args.backfill)
        if args.json:
            print_json([run_document(run) for run in runs])
            return EXIT_OK
        for run in runs:
            print(f"run {run.id} {run.logical_date} {run.state}")
        return EXIT_OK
    with reaching_broker(settings):
        run = runs_service.cancel_run(args.run_id)
    if args.json:
        print_json(run_document(run))
    else:
        print(f"run {run.id} {run.state}")
    return EXIT_OK


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from etl.domain.clock import utc_now
    from etl.service.reconcile import sync_and_reconcile

    services = open_services(settings)
    with reaching_broker(settings):
        done = sync_and_reconcile(
            services.dead_letters,
            services.runs,
            now=utc_now(),
            stale_after_s=settings.reconcile_stale_s,
            deadline_s=settings.run_deadline_s,
        )
    if args.json:
        print_json({"dead_letters_recorded": done.dead_letters_recorded, "actions": done.actions})
        return EXIT_OK
    print(
        f"{count(done.dead_letters_recorded)} dead letters recorded; "
        f"{count(len(done.actions))} runs acted on"
    )
    for action in done.actions:
        print(f"  {action}")
    return EXIT_OK


def print_run(run: Run, chunks: list[Chunk], with_chunks: bool = False) -> None:
    """A run as a few labelled lines, and optionally a table of its chunks."""
    print(f"run       {run.id}")
    print(f"pipeline  {run.pipeline}  dt={run.logical_date}  trigger={run.trigger}")
    print(f"interval  {run.interval}")
    read, empty = explain_run(run)
    for line in read:
        print(f"reads     {line}")
    print(f"state     {run.state}" + (f"  ({run.reason})" if run.reason else ""))
    if empty is not None:
        print(f"read      nothing: {empty}")
    if run.params:
        print(f"params    {json.dumps(run.params)}")
    if run.chunk_count is not None:
        done = sum(1 for chunk in chunks if chunk.state is ChunkState.DONE)
        print(f"chunks    {count(done)}/{count(run.chunk_count)} done")
    if run.rows_written is not None:
        print(f"rows      {count(run.rows_written)} written, {count(run.rows_rejected)} rejected")
    if run.manifest_key:
        print(f"manifest  {run.manifest_key}")
    if with_chunks and chunks:
        print()
        print_table(
            ["CHUNK", "KEYS", "STATE", "ROWS", "REJECTED", "SECONDS", "TRIES", "ERROR"],
            [
                [
                    str(chunk.index),
                    chunk.keys,
                    chunk.state,
                    chunk.rows,
                    chunk.rows_rejected,
                    _seconds(chunk),
                    chunk.attempts,
                    chunk.error,
                ]
                for chunk in chunks
            ],
            right={"CHUNK", "KEYS", "ROWS", "REJECTED", "SECONDS", "TRIES"},
        )


def _seconds(chunk: Chunk) -> str:
    if chunk.state is ChunkState.DONE and chunk.started_at and chunk.finished_at:
        return f"{(chunk.finished_at - chunk.started_at).total_seconds():.2f}"
    return ""
