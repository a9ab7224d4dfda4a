"""``etl rabbitmq-definitions``: what a deployment runs once before the broker starts."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from etl.cli.common import EXIT_OK, EXIT_USAGE, CliError
from etl.cli.display import add_json_flag, print_json
from etl.config import Settings

DEFAULT_TEMPLATE = "infra/rabbitmq/definitions.json"


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    definitions = sub.add_parser(
        "rabbitmq-definitions",
        help="write RabbitMQ definitions with users' password hashes from RABBITMQ_PASSWORD_*",
    )
    definitions.add_argument("--template", default=DEFAULT_TEMPLATE, help="definitions to fill in")
    definitions.add_argument("--out", required=True, help="where to write the filled-in file")
    add_json_flag(definitions)
    definitions.set_defaults(handler=cmd_rabbitmq_definitions)


def cmd_rabbitmq_definitions(args: argparse.Namespace, settings: Settings) -> int:
    from etl.adapters.rabbitmq_definitions import MissingPasswords, with_passwords

    try:
        template = json.loads(Path(args.template).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the template {args.template}: {exc}", EXIT_USAGE) from None
    try:
        rendered = with_passwords(template, os.environ)
    except MissingPasswords as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    out = Path(args.out)
    # Written whole and renamed into place: the broker never boots from half a file.
    # Readable by the broker's own user, which is not ours.
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=out.parent, prefix=".definitions-", delete=False
    ) as handle:
        try:
            json.dump(rendered, handle, indent=2)
            handle.flush()
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, out)
        except BaseException:
            os.unlink(handle.name)
            raise
    users = [user["name"] for user in rendered.get("users", [])]
    queues = len(rendered.get("queues", []))
    if args.json:
        print_json({"out": str(out), "users": users, "queues": queues})
    else:
        print(f"wrote {out}: users {', '.join(users)}; {queues} queues")
    return EXIT_OK
