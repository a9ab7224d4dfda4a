"""The ``etl`` command: trigger and inspect runs, and start the processes.

Each module here registers one group of subcommands. Exit status is 0 only when what
was asked succeeded; an error is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import etl.cli.backfill as backfill
import etl.cli.check as check
import etl.cli.deploy as deploy
import etl.cli.dlq as dlq
import etl.cli.outputs as outputs
import etl.cli.preview as preview
import etl.cli.processes as processes
import etl.cli.runs as runs
from etl.cli.common import EXIT_USAGE, CliError, Parser
from etl.config import SettingsError, load_settings
from etl.domain.errors import EtlError

COMMAND_GROUPS = (runs, preview, backfill, dlq, outputs, processes, check, deploy)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = Parser(prog="etl", description="nightly-etl: batch ETL on Celery.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``etl`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        settings = load_settings()
        status: int = args.handler(args, settings)
        return status
    except CliError as exc:
        print(f"etl: error: {exc}", file=sys.stderr)
        return exc.status
    except EtlError as exc:  # not found, conflict, ...: the status its kind maps to
        error = CliError.from_error(exc)
        print(f"etl: error: {error}", file=sys.stderr)
        return error.status
    except SettingsError as exc:
        print(f"etl: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("etl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
