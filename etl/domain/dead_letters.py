"""Dead letters: messages RabbitMQ parked because a worker rejected them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class DeadLetterState(StrEnum):
    """``dead`` until replayed or purged."""

    DEAD = "dead"
    REPLAYED = "replayed"
    PURGED = "purged"


@dataclass(frozen=True)
class DeadLetter:
    """One parked message, as recorded in the ledger."""

    id: int
    fingerprint: str
    queue: str
    task: str | None
    task_id: str | None
    run_id: str | None
    chunk_index: int | None
    reason: str
    death_reason: str | None
    death_count: int
    state: DeadLetterState
    first_seen_at: datetime
    last_seen_at: datetime
    replay_count: int
    replayed_at: datetime | None
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]
    body: bytes


def run_and_chunk(task: str | None, args: Any) -> tuple[str | None, int | None]:
    """The run id and chunk index a task message is about, if its arguments say so."""
    if not isinstance(args, list | tuple) or not args or not isinstance(args[0], str):
        return None, None
    if task == "etl.transform_chunk" and len(args) >= 2 and type(args[1]) is int:
        return args[0], args[1]
    if task in {"etl.plan_run", "etl.commit_run"}:
        return args[0], None
    return None, None


def explain(
    *,
    task: str | None,
    known_tasks: frozenset[str],
    decoded: bool,
    content_type: str | None,
    death_reason: str | None,
    ledger_error: str | None,
) -> str:
    """Why a message was dead-lettered, in words an operator can act on.

    The worker that rejected a message does not write the reason into it, so the reason
    is derived: the broker's own (delivery limit, expiry), a message no worker could
    read, a task nobody registered, or the error the ledger recorded for its chunk.
    """
    if death_reason == "delivery_limit":
        return "delivered too many times (quorum queue delivery limit)"
    if death_reason == "expired":
        return "expired before a worker took it"
    if content_type not in {"application/json", None}:
        return f"content type {content_type!r} is refused (JSON only)"
    if not decoded:
        return "the body is not valid JSON"
    if task is None:
        return "not a task message (no task header)"
    if task not in known_tasks:
        return f"unknown task {task!r}"
    if ledger_error:
        return ledger_error
    return "rejected by the worker (see its log; the arguments may be of the wrong type)"
