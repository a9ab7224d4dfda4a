"""The ``etl`` command: trigger and inspect runs, and start the processes.

Each module here registers one group of subcommands. Exit status is 0 only when what
was asked succeeded; an error is one line on stderr, ``etl: error: <what>: <why and the
fix>``. Every command that prints takes ``--json`` (one JSON document on stdout).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import etl
import etl.cli.backfill as backfill
import etl.cli.check as check
import etl.cli.deploy as deploy
import etl.cli.dlq as dlq
import etl.cli.outputs as outputs
import etl.cli.preview as preview
import etl.cli.processes as processes
import etl.cli.runs as runs
from etl.cli.common import EXIT_FAILED, EXIT_USAGE, CliError, Parser, check_urls, first_line
from etl.config import SettingsError, load_settings
from etl.domain.errors import EtlError

COMMAND_GROUPS = (runs, preview, backfill, dlq, outputs, processes, check, deploy)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = Parser(prog="etl", description="nightly-etl: batch ETL on Celery.")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {etl.__version__}",
        help="print the version of nightly-etl and exit",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an unexpected error, print Python's whole traceback instead of one line "
        "(for a bug report)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="command", help="one of:"
    )
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``etl`` command; returns the exit status."""
    args: argparse.Namespace | None = None
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version print, then exit 0
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        settings = load_settings()
        check_urls(settings)
        status: int = args.handler(args, settings)
        return status
    except CliError as exc:
        return _error(str(exc), exc.status)
    except EtlError as exc:  # not found, conflict, ...: the status its kind maps to
        error = CliError.from_error(exc)
        return _error(str(error), error.status)
    except SettingsError as exc:
        return _error(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        print("etl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `etl runs | head`: the reader has all it wanted
        # Python would complain when it flushes stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except Exception as exc:
        # A failure no command expected: still one line, unless asked for the traceback.
        if args is not None and args.traceback:
            raise
        return _error(
            f"unexpected {type(exc).__name__}: {first_line(exc)}; `etl --traceback "
            f"{args.command if args else '...'} ...` shows where, for a bug report",
            EXIT_FAILED,
        )


def _error(message: str, status: int) -> int:
    print(f"etl: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
