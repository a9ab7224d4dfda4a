"""``etl check``: every dependency a deployment needs, one line each (etl/service/checks.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from etl.cli.common import EXIT_OK, CliError, positive
from etl.cli.display import add_json_flag
from etl.config import Settings


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    check = sub.add_parser(
        "check",
        help="check every dependency (ledger, source, broker and queues, result backend, "
        "bucket, pipeline modules): ok, or the problem and its fix; exit 0 only if all are ok",
    )
    add_json_flag(check)
    check.add_argument(
        "--timeout",
        type=positive,
        default=3,
        metavar="SECONDS",
        help="how long each probe waits for an answer (default 3)",
    )
    check.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from etl.adapters.probe import SettingsProbes
    from etl.service.checks import run_checks

    probes = SettingsProbes(settings, timeout=args.timeout)
    results = run_checks(probes, settings.pipeline_modules, settings.pipeline_path)
    failed = [result.name for result in results if not result.ok]
    if args.json:
        document = {"ok": not failed, "checks": [result.as_dict() for result in results]}
        print(json.dumps(document, indent=2))
    else:
        for result in results:
            print(result.line())
    if failed:
        raise CliError(f"{len(failed)} of {len(results)} checks not ok: {', '.join(failed)}")
    return EXIT_OK
