"""``etl dlq list|show|replay|purge``: parked messages, visible and replayable."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from etl.cli.common import EXIT_OK, Parser, open_services, reaching_broker
from etl.cli.display import add_json_flag, count, print_json, print_table
from etl.config import Settings

if TYPE_CHECKING:
    # Not at import: the service layer pulls in prometheus_client, which must not be
    # loaded before ``etl worker`` sets PROMETHEUS_MULTIPROC_DIR.
    from etl.service.dead_letters import DeadLetterService


def register(sub: Any) -> None:
    """Add this group's subcommands."""
    dlq = sub.add_parser("dlq", help="dead-lettered messages")
    actions = dlq.add_subparsers(
        dest="dlq_action", required=True, parser_class=Parser, metavar="action", help="one of:"
    )

    listing = actions.add_parser("list", help="messages parked in the dead-letter queues")
    listing.add_argument("--run", help="only those of one run")
    listing.add_argument(
        "--all", action="store_true", help="include replayed, purged and resolved ones"
    )
    add_json_flag(listing)
    listing.set_defaults(handler=cmd_list)

    show = actions.add_parser("show", help="one dead letter in full, as JSON")
    show.add_argument("id", type=int, help="the dead letter's id (`etl dlq list` shows them)")
    show.add_argument(
        "--json", action="store_true", help="accepted for scripts: show always prints JSON"
    )
    show.set_defaults(handler=cmd_show)

    replay = actions.add_parser("replay", help="send parked work again (once)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?", help="the dead letter's id")
    target.add_argument("--all", action="store_true", help="every dead letter (of --run, if given)")
    replay.add_argument("--run", help="with --all: only those of one run")
    add_json_flag(replay)
    replay.set_defaults(handler=cmd_replay)

    purge = actions.add_parser("purge", help="mark dead letters purged (kept, never replayed)")
    purge.add_argument("--run", help="only those of one run")
    add_json_flag(purge)
    purge.set_defaults(handler=cmd_purge)


def _service(settings: Settings) -> DeadLetterService:
    return open_services(settings).dead_letters


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    with reaching_broker(settings):  # the queues are drained into the ledger first
        letters = service.list_letters(run_id=args.run, include_handled=args.all)
    if args.json:
        print_json([_summary(letter) for letter in letters])
        return EXIT_OK
    print_table(
        ["ID", "QUEUE", "TASK", "RUN", "CHUNK", "STATE", "REASON"],
        [
            [
                str(letter.id),
                letter.queue,
                letter.task or "-",
                letter.run_id or "-",
                None if letter.chunk_index is None else str(letter.chunk_index),
                letter.state,
                letter.reason,
            ]
            for letter in letters
        ],
        right={"ID", "CHUNK"},
    )
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    with reaching_broker(settings):
        service.sync()
    letter = service.ledger.get_dead_letter(args.id)
    document = _summary(letter)
    document["headers"] = letter.headers
    document["body"] = letter.body.decode("utf-8", errors="replace")
    # The ledger keeps at most the first 64 KiB of a body: its whole size and SHA-256.
    document["body_size"] = letter.body_size
    document["body_sha256"] = letter.body_sha256
    print_json(document)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    with reaching_broker(settings):
        outcomes = service.replay_all(run_id=args.run) if args.all else [service.replay(args.id)]
    if args.json:
        print_json(
            [{"id": outcome.dead_letter_id, "action": outcome.action} for outcome in outcomes]
        )
        return EXIT_OK
    for outcome in outcomes:
        print(f"dead letter {outcome.dead_letter_id}: {outcome.action}")
    if not outcomes:
        print("no dead letters to replay")
    return EXIT_OK


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    with reaching_broker(settings):  # the queues are drained into the ledger first
        purged = service.purge(run_id=args.run)
    if args.json:
        print_json({"purged": purged})
    else:
        print(f"purged {count(purged)} dead letters")
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
