"""``etl preview``: a pipeline tried on a few source rows, writing nothing."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import ValidationError

from etl.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    date_or_timestamp,
    describe_params_error,
    first_line,
    load_pipelines,
    param,
    positive,
)
from etl.cli.display import add_json_flag
from etl.config import Settings

# A value is cut to this many characters in the table (not in --json).
CELL_CHARACTERS = 24


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands."""
    preview = sub.add_parser(
        "preview",
        help="read a few source rows, transform them and show the records and rejections "
        "(writes nothing)",
    )
    preview.add_argument("pipeline", help="the pipeline's name (`etl pipelines` lists them)")
    preview.add_argument(
        "--interval",
        type=date_or_timestamp,
        help="the interval a run would read: its date YYYY-MM-DD (a daily pipeline) or the "
        "ISO timestamp that starts it; default: the last interval that ended",
    )
    preview.add_argument(
        "--param", type=param, action="append", default=[], metavar="K=V", help="a run param"
    )
    preview.add_argument(
        "--limit", type=positive, default=10, help="source rows to read (default 10)"
    )
    add_json_flag(preview)
    preview.set_defaults(handler=cmd_preview)


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    from etl.adapters.db import SqlSource, make_engine, redact_url
    from etl.domain.clock import utc_now
    from etl.pipelines import get_pipeline
    from etl.service.preview import TransformRaised, preview

    load_pipelines(settings)
    pipeline = get_pipeline(args.pipeline)
    try:
        params = pipeline.validate_params(dict(args.param)).model_dump(
            mode="json", exclude_none=True
        )
        interval = pipeline.grain.resolve(args.interval, utc_now())
    except ValidationError as exc:
        raise CliError(describe_params_error(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    watermark = _watermark(settings, pipeline.name) if pipeline.source.incremental else None
    url = settings.effective_source_database_url
    engine = make_engine(url, 1, settings.database_ssl_args)
    try:
        shown = preview(
            pipeline,
            SqlSource(engine, pipeline.source),
            interval=interval,
            params=params,
            limit=args.limit,
            watermark=watermark,
        )
    except TransformRaised as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    except Exception as exc:
        raise CliError(f"cannot read the source at {redact_url(url)}: {first_line(exc)}") from None
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(_document(shown), indent=2, default=str))
    else:
        _print(shown, pipeline.grain.name(interval))
    return EXIT_OK


def _watermark(settings: Settings, pipeline: str) -> Any:
    """An incremental pipeline's watermark, read only: previewing moves nothing."""
    from etl.adapters.db import make_engine, redact_url
    from etl.adapters.ledger import Ledger

    engine = make_engine(settings.database_url, 1, settings.database_ssl_args)
    try:
        return Ledger(engine).watermark(pipeline)
    except Exception as exc:
        raise CliError(
            f"cannot read the watermark of {pipeline} in the ledger at "
            f"{redact_url(settings.database_url)}: {first_line(exc)}"
        ) from None
    finally:
        engine.dispose()


def _document(shown: Any) -> dict[str, Any]:
    return {
        "pipeline": shown.pipeline,
        "interval": shown.scope.interval.as_dict(),
        "cursor": shown.scope.cursor.as_dict() if shown.scope.cursor else None,
        "rows_in_scope": shown.rows_in_scope,
        "rows_read": shown.rows_read,
        "records": shown.records,
        "rejections": [{"key": r.key, "reason": r.reason} for r in shown.rejections],
    }


def _print(shown: Any, interval_name: str) -> None:
    scope = shown.scope
    print(f"pipeline  {shown.pipeline}, interval {interval_name}: {scope.interval}")
    if scope.cursor is not None:
        window = scope.cursor.as_dict()
        print(
            f"cursor    {window['cursor_column']} in ({window['cursor_low'] or 'the start'}, "
            f"{window['cursor_high']}]"
        )
    print(
        f"rows      {shown.rows_read:,} read of {shown.rows_in_scope:,} a run would read now; "
        f"{len(shown.records):,} records, {len(shown.rejections):,} rejected"
    )
    if shown.records:
        columns = list(dict.fromkeys(key for record in shown.records for key in record))
        cells = [[_cell(record.get(column, "")) for column in columns] for record in shown.records]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        print()
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if shown.rejections:
        print()
        print("rejected")
        for rejection in shown.rejections:
            print(f"  {rejection.key}  {rejection.reason}")


def _cell(value: Any) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text if len(text) <= CELL_CHARACTERS else text[: CELL_CHARACTERS - 1] + "…"
