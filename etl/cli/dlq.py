"""``etl dlq list|show|replay|purge``: parked messages, visible and replayable."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from etl.cli.common import EXIT_OK, Parser, open_services
from etl.config import Settings

if TYPE_CHECKING:
    # Not at import: the service layer pulls in prometheus_client, which must not be
    # loaded before ``etl worker`` sets PROMETHEUS_MULTIPROC_DIR.
    from etl.service.dead_letters import DeadLetterService


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    dlq = sub.add_parser("dlq", help="dead-lettered messages")
    actions = dlq.add_subparsers(dest="dlq_action", required=True, parser_class=Parser)

    listing = actions.add_parser("list", help="messages parked in the dead-letter queues")
    listing.add_argument("--run", help="only those of one run")
    listing.add_argument("--all", action="store_true", help="include replayed and purged ones")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help="one dead letter in full")
    show.add_argument("id", type=int)
    show.set_defaults(handler=cmd_show)

    replay = actions.add_parser("replay", help="send parked work again (once)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?")
    target.add_argument("--all", action="store_true", help="every dead letter (of --run, if given)")
    replay.add_argument("--run", help="with --all: only those of one run")
    replay.set_defaults(handler=cmd_replay)

    purge = actions.add_parser("purge", help="mark dead letters purged (kept, never replayed)")
    purge.add_argument("--run", help="only those of one run")
    purge.set_defaults(handler=cmd_purge)


def _service(settings: Settings) -> DeadLetterService:
    return open_services(settings).dead_letters


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    letters = _service(settings).list_letters(run_id=args.run, include_handled=args.all)
    if args.json:
        print(json.dumps([_summary(letter) for letter in letters], indent=2))
        return EXIT_OK
    print(f"{'ID':>5}  {'QUEUE':14}  {'TASK':22}  {'RUN':36}  {'CHUNK':>5}  {'STATE':8}  REASON")
    for letter in letters:
        chunk = "" if letter.chunk_index is None else str(letter.chunk_index)
        task, run = letter.task or "-", letter.run_id or "-"
        print(
            f"{letter.id:>5}  {letter.queue:14}  {task:22}  {run:36}  "
            f"{chunk:>5}  {letter.state:8}  {letter.reason}"
        )
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    service.sync()
    letter = service.ledger.get_dead_letter(args.id)
    document = _summary(letter)
    document["headers"] = letter.headers
    document["body"] = letter.body.decode("utf-8", errors="replace")
    # The ledger keeps at most the first 64 KiB of a body: its whole size and SHA-256.
    document["body_size"] = letter.body_size
    document["body_sha256"] = letter.body_sha256
    print(json.dumps(document, indent=2))
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    outcomes = service.replay_all(run_id=args.run) if args.all else [service.replay(args.id)]
    for outcome in outcomes:
        print(f"dead letter {outcome.dead_letter_id}: {outcome.action}")
    if not outcomes:
        print("no dead letters to replay")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    purged = _service(settings).purge(run_id=args.run)
    print(f"purged {purged} dead letters")
    return EXIT_OK


def _summary(letter: Any) -> dict[str, Any]:
    return {
        "id": letter.id,
        "queue": letter.queue,
        "task": letter.task,
        "task_id": letter.task_id,
        "run_id": letter.run_id,
        "chunk_index": letter.chunk_index,
        "reason": letter.reason,
        "death_reason": letter.death_reason,
        "death_count": letter.death_count,
        "state": letter.state.value,
        "first_seen_at": letter.first_seen_at.isoformat(),
        "last_seen_at": letter.last_seen_at.isoformat(),
        "replay_count": letter.replay_count,
    }
