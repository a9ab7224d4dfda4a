"""``etl outputs list|show|verify|prune``: the consumer's side, from S3 alone.

Runs are found by listing the bucket, not through the ledger, so these commands work
wherever the bucket can be read. ``latest`` (with ``--pipeline``) stands for the
pipeline's newest committed run.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from etl.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Parser,
    first_line,
    load_pipelines,
    positive,
)
from etl.cli.display import add_json_flag, print_json, print_table
from etl.config import Settings
from etl.domain.outputs import RunOutput, choose_latest

if TYPE_CHECKING:
    from etl.service.outputs import CommittedRun, RunReader, Verification

LATEST = "latest"


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    outputs = sub.add_parser("outputs", help="committed runs in S3: list, show, verify, prune")
    actions = outputs.add_subparsers(
        dest="outputs_action", required=True, parser_class=Parser, metavar="action", help="one of:"
    )

    listing = actions.add_parser("list", help="a pipeline's runs in S3, newest first")
    listing.add_argument("pipeline", help="the pipeline's name (`etl pipelines` lists them)")
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help="a committed run and its manifest")
    show.add_argument("run_id", help=f"a run id, or {LATEST!r} with --pipeline")
    show.add_argument("--pipeline", help="look only under this pipeline (required for latest)")
    add_json_flag(show)
    show.set_defaults(handler=cmd_show)

    verify = actions.add_parser(
        "verify", help="download every part and check sha256, size and rows against the manifest"
    )
    verify.add_argument("run_id", help=f"a run id, or {LATEST!r} with --pipeline")
    verify.add_argument("--pipeline", help="look only under this pipeline (required for latest)")
    add_json_flag(verify)
    verify.set_defaults(handler=cmd_verify)

    prune = actions.add_parser(
        "prune", help="delete runs older than --keep-days, never a pipeline's latest committed run"
    )
    prune.add_argument(
        "--keep-days",
        type=positive,
        required=True,
        metavar="DAYS",
        help="keep runs whose logical date is within this many days",
    )
    prune.add_argument("--pipeline", help="only this pipeline (default: every registered one)")
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    add_json_flag(prune)
    prune.set_defaults(handler=cmd_prune)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    output_path = _output_paths(settings, args.pipeline)[args.pipeline]
    with _reading(settings) as reader:
        runs = reader.runs(output_path)
    latest = choose_latest(runs)
    if args.json:
        print_json([_run_summary(run, run is latest) for run in runs])
        return EXIT_OK
    print_table(
        ["PARTITION", "RUN ID", "STATE", "OBJECTS", "BYTES", "WRITTEN"],
        [
            [
                run.partition,
                run.run_id,
                ("committed" if run.committed else "incomplete")
                + (" (latest)" if run is latest else ""),
                len(run.objects),
                run.total_bytes,
                _utc(run.committed_at or run.last_written),
            ]
            for run in runs
        ],
        right={"OBJECTS", "BYTES"},
    )
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    with _reading(settings) as reader:
        run = _committed_run(reader, settings, args)
    manifest = run.manifest
    document = manifest.document
    if args.json:
        summary = {
            **_run_summary(run.output, None),
            "manifest_uri": reader.uri(run.output.manifest_key),
            "manifest": document,
        }
        print_json(summary)
        return EXIT_OK
    committed_at = run.output.committed_at
    print(f"run       {run.run_id}  {manifest.pipeline}  {run.output.partition}")
    if "interval" in document:
        interval = document["interval"]
        print(
            f"interval  {interval.get('start')} .. {interval.get('end')} ({document.get('mode')})"
        )
    print(f"committed {_utc(committed_at) if committed_at else '-'}")
    print(f"manifest  {reader.uri(run.output.manifest_key)} (version {manifest.version})")
    print(f"format    {manifest.format}")
    rejected = document.get("rejected_rows", 0)
    print(f"rows      {manifest.total_rows:,} written, {rejected:,} rejected")
    total_bytes = sum(part.bytes for part in manifest.parts)
    print(f"parts     {len(manifest.parts)} ({total_bytes:,} bytes)")
    for part in manifest.parts:
        print(f"  {part.key}  {part.rows:>10,} rows  {part.bytes:>12,} bytes  {part.sha256}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    with _reading(settings) as reader:
        run = _committed_run(reader, settings, args)
        verification = reader.verify(run)
    bad = [check.part.key.rsplit("/", 1)[-1] for check in verification.parts if not check.ok]
    if args.json:
        print_json(
            {
                "run_id": run.run_id,
                "ok": not bad,
                "rows": run.manifest.total_rows,
                "parts": [
                    {
                        "key": check.part.key,
                        "rows": check.part.rows,
                        "bytes": check.part.bytes,
                        "ok": check.ok,
                        "problems": list(check.problems),
                    }
                    for check in verification.parts
                ],
                "unlisted": list(verification.unlisted),
            }
        )
    else:
        _print_verification(verification)
    if bad:
        raise CliError(
            f"run {run.run_id} failed verification: {len(bad)} of {len(verification.parts)} "
            f"parts differ from the manifest: {', '.join(bad)}",
            EXIT_FAILED,
        )
    if not args.json:
        print(
            f"run {run.run_id} verified: {len(verification.parts)} parts, "
            f"{run.manifest.total_rows:,} rows match the manifest"
        )
    return EXIT_OK


def _print_verification(verification: Verification) -> None:
    for check in verification.parts:
        if check.ok:
            print(f"ok   {check.part.key}  {check.part.rows:,} rows  {check.part.bytes:,} bytes")
        for problem in check.problems:
            print(f"BAD  {problem}")
    for key in verification.unlisted:
        print(f"note {key} is not in the manifest (readers ignore it)")


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from etl.service.retention import prune

    paths = _output_paths(settings, *([args.pipeline] if args.pipeline else []))
    now = datetime.now(UTC)
    verb = "would delete" if args.dry_run else "deleted"
    pruned = []
    with _reading(settings) as reader:
        for name, output_path in paths.items():
            for run in prune(
                reader, output_path, keep_days=args.keep_days, now=now, dry_run=args.dry_run
            ):
                pruned.append({"pipeline": name, **_run_summary(run, None)})
                if not args.json:
                    print(
                        f"{verb} {name} dt={run.logical_date} run={run.run_id} "
                        f"({len(run.objects):,} objects, {run.total_bytes:,} bytes)"
                    )
    if args.json:
        print_json({"dry_run": args.dry_run, "keep_days": args.keep_days, "runs": pruned})
    else:
        print(f"{verb} {len(pruned):,} runs older than {args.keep_days} days")
    return EXIT_OK


def _output_paths(settings: Settings, *names: str) -> dict[str, str]:
    """Pipeline name -> output path, for the names given or every registered pipeline."""
    from etl.pipelines import PIPELINES, UnknownPipeline, get_pipeline

    load_pipelines(settings)
    try:
        return {name: get_pipeline(name).output_path for name in names or list(PIPELINES)}
    except UnknownPipeline as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


@contextmanager
def _reading(settings: Settings) -> Iterator[RunReader]:
    """A RunReader on the configured bucket; S3 and output errors become one-line errors."""
    from etl.adapters.errors import STORAGE_ERRORS
    from etl.bootstrap import build_run_reader
    from etl.service.outputs import OutputError

    try:
        yield build_run_reader(settings)
    except OutputError as exc:
        raise CliError(str(exc)) from None
    except STORAGE_ERRORS as exc:
        where = f"s3://{settings.s3_bucket}/{settings.s3_prefix}"
        raise CliError(
            f"cannot read {where}: {first_line(exc)}; check ETL_S3_BUCKET, ETL_S3_ENDPOINT_URL "
            "and the AWS credentials"
        ) from None


def _committed_run(reader: RunReader, settings: Settings, args: argparse.Namespace) -> CommittedRun:
    if args.run_id == LATEST:
        if not args.pipeline:
            raise CliError(f"{LATEST!r} needs --pipeline", EXIT_USAGE)
        return reader.latest(_output_paths(settings, args.pipeline)[args.pipeline])
    paths = _output_paths(settings, *([args.pipeline] if args.pipeline else []))
    output = reader.find(args.run_id, paths.values())
    return reader.open(output)


def _run_summary(run: RunOutput, latest: bool | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "run_id": run.run_id,
        "logical_date": run.logical_date.isoformat(),
        "partition": run.partition,
        "prefix": run.prefix,
        "committed": run.committed,
    }
    if latest is not None:
        summary["latest"] = latest
    committed_at = run.committed_at
    summary |= {
        "committed_at": committed_at.isoformat() if committed_at else None,
        "last_written": run.last_written.isoformat(),
        "objects": len(run.objects),
        "bytes": run.total_bytes,
    }
    return summary


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
