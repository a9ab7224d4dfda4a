"""Dead letters: messages RabbitMQ parked in a dead-letter queue, what they say about
themselves, and when one may change a run.

Anyone who can get a message into a dead-letter queue can write anything in it,
including a death record (``x-death``) and the arguments of a real run. So a dead letter
is judged with the same contract checks the worker's consumer runs
(``etl.domain.task_messages``), against the moment it died, and its run id is taken only
from arguments that pass them (and, with signing on, from a body whose signature
verifies). Only such a letter, dead in one of our work queues for a reason the broker
gives, may fail the work it left undone. Pure: no broker, no database.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from etl.domain.clock import as_utc
from etl.domain.runs import TERMINAL_RUN_STATES, ChunkState, RunState
from etl.domain.task_messages import (
    TASK_COMMIT_RUN,
    TASK_PLAN_RUN,
    TASK_TRANSFORM_CHUNK,
    InvalidTaskMessage,
    check_headers,
    check_json_body,
    run_and_chunk,
)

# What the ledger keeps of a message: its body up to this size (with the full size and
# SHA-256), its headers up to about this size, texts up to these lengths. A hostile
# message can be as big as the broker allows; the record of it stays small.
BODY_KEPT_BYTES = 64 * 1024
HEADERS_KEPT_BYTES = 64 * 1024
HEADER_TEXT_KEPT = 4_000
HEADER_DEPTH_KEPT = 16
HEADER_ITEMS_KEPT = 100
REASON_KEPT = 2_000
# A header of the stored headers that says they are not the message's own, whole.
HEADERS_CUT = "x-etl-headers-cut"

# Headers RabbitMQ adds when it dead-letters; the worker never saw them.
DEATH_HEADERS = frozenset(
    {"x-death"}
    | {
        f"x-{when}-death-{what}"
        for when in ("first", "last")
        for what in ("queue", "reason", "exchange")
    }
)
# The broker's reasons after which the work a message carried was not done.
ACTED_ON_DEATHS = frozenset({"rejected", "delivery_limit", "expired"})
JSON_CONTENT_TYPE = "application/json"
SIGNED_CONTENT_TYPE = "application/data"  # Celery's "auth" serializer


def sent_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """A parked message's headers as they were sent: without the broker's death headers."""
    return {key: value for key, value in headers.items() if key not in DEATH_HEADERS}


class DeadLetterState(StrEnum):
    """``dead`` until replayed, purged, or resolved (its run later succeeded)."""

    DEAD = "dead"
    REPLAYED = "replayed"
    PURGED = "purged"
    RESOLVED = "resolved"


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
    # The whole body's size and SHA-256 (``body`` may be only its first part).
    body_size: int
    body_sha256: str | None = None

    @property
    def kept_whole(self) -> bool:
        """True when the ledger holds the message as it was, so it can be sent again."""
        return len(self.body) == self.body_size and HEADERS_CUT not in self.headers


# -- the death record ----------------------------------------------------------------------


@dataclass(frozen=True)
class Death:
    """The latest death RabbitMQ recorded in a message (the first ``x-death`` entry)."""

    queue: str
    reason: str
    count: int
    time: datetime


class UnverifiedBody(Exception):
    """A body that should be signed and is not, or whose signature does not verify; the
    text says which."""


# Opens a signed body (Celery's "auth" format) and returns the JSON it signs; raises
# UnverifiedBody saying what is wrong.
OpenSigned = Callable[[bytes], bytes]


def read_death(headers: Any, source_queue: str) -> tuple[Death | None, str | None]:
    """The death RabbitMQ recorded when it moved the message out of ``source_queue``, or
    (None, why there is none to go by)."""
    deaths = headers.get("x-death") if isinstance(headers, Mapping) else None
    if deaths is None:
        return None, (
            "no death record (x-death): RabbitMQ did not dead-letter it, it was published "
            "into the dead-letter queue directly"
        )
    entry = deaths[0] if isinstance(deaths, list | tuple) and deaths else None
    if not isinstance(entry, Mapping):
        return None, "its death record (x-death) is malformed, not one RabbitMQ wrote"
    queue, reason = entry.get("queue"), entry.get("reason")
    count, moment = entry.get("count"), entry.get("time")
    if (
        not isinstance(queue, str)
        or not isinstance(reason, str)
        or type(count) is not int
        or not isinstance(moment, datetime)
    ):
        return None, "its death record (x-death) is malformed, not one RabbitMQ wrote"
    if queue != source_queue:
        return None, (
            f"its death record names queue {printable(queue, 100)!r}, not {source_queue!r} "
            "whose dead letters it is among"
        )
    return Death(queue=queue, reason=reason, count=count, time=as_utc(moment)), None


def explain_death(reason: str) -> str:
    """RabbitMQ's reason for a death, in words."""
    return {
        "rejected": "rejected by a worker",
        "delivery_limit": "delivered too many times (quorum queue delivery limit)",
        "expired": "expired before a worker took it",
        "maxlen": "dropped from a full queue (max-length)",
    }.get(reason, f"dead-lettered by the broker ({printable(reason, 64)!r})")


# -- the verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What a dead letter is, judged by the worker's own contract checks."""

    death: Death | None
    death_problem: str | None  # why the death record cannot be gone by
    contract_problem: str | None  # why a worker refuses it (None: it is one of ours)
    task: str | None
    run_id: str | None
    chunk_index: int | None

    @property
    def trusted(self) -> bool:
        """The message passes every check a worker makes (signature included)."""
        return self.contract_problem is None

    @property
    def may_act(self) -> bool:
        """It may fail the work it names: one of ours, dead in its work queue for a
        reason after which that work was not done."""
        return (
            self.trusted
            and self.death is not None
            and self.death.reason in ACTED_ON_DEATHS
            and self.run_id is not None
        )

    def reason(self, ledger_error: str | None = None) -> str:
        """Why it is a dead letter, in words an operator can act on; ``ledger_error`` is
        what the ledger recorded for its run or chunk."""
        parts = []
        if self.death_problem:
            parts.append(self.death_problem)
        if self.contract_problem:
            if self.death is not None and self.death.reason != "rejected":
                parts.append(f"{explain_death(self.death.reason)}: {self.contract_problem}")
            else:
                parts.append(self.contract_problem)
        elif self.death is not None and self.death.reason == "rejected":
            parts.append(
                ledger_error
                or "rejected by a worker after its task gave up; the ledger has no error for "
                "it (the worker's log says why)"
            )
        elif self.death is not None:
            parts.append(explain_death(self.death.reason))
        return printable("; ".join(parts) or "no reason could be found", REASON_KEPT)


def judge(
    headers: Any,
    properties: Mapping[str, Any],
    content_type: str | None,
    body: bytes,
    *,
    source_queue: str,
    open_signed: OpenSigned | None,
    max_eta_s: float,
) -> Verdict:
    """Run the worker's checks on a dead letter: its headers (as at the moment it died,
    so an ETA refused then is refused now), its content type, its signature when
    ``open_signed`` is given (signing on), its body and arguments."""
    death, death_problem = read_death(headers, source_queue)
    original = sent_headers(headers) if isinstance(headers, Mapping) else headers
    task = original.get("task") if isinstance(original, Mapping) else None
    try:
        check_headers(
            original,
            properties,
            now=death.time if death is not None else None,
            max_eta_s=max_eta_s,
        )
        bound = check_json_body(str(task), _json_of(content_type, body, open_signed))
    except InvalidTaskMessage as refused:
        problem = str(refused)
    except UnverifiedBody as unverified:
        problem = str(unverified)
    else:
        run_id, chunk_index = run_and_chunk(task, bound)
        return Verdict(death, death_problem, None, task, run_id, chunk_index)
    return Verdict(
        death,
        death_problem,
        printable(problem, REASON_KEPT),
        task if isinstance(task, str) else None,
        None,
        None,
    )


def _json_of(content_type: str | None, body: bytes, open_signed: OpenSigned | None) -> bytes:
    shown = printable(str(content_type), 100)
    if open_signed is None:
        if content_type != JSON_CONTENT_TYPE:
            raise InvalidTaskMessage(
                f"content type {shown!r} is refused (accepted: {JSON_CONTENT_TYPE})"
            )
        return body
    if content_type != SIGNED_CONTENT_TYPE:
        raise UnverifiedBody(
            f"not signed: content type {shown!r}, and the workers run only signed messages "
            f"({SIGNED_CONTENT_TYPE})"
        )
    return open_signed(body)


def work_left_undone(verdict: Verdict, run_state: RunState, chunk_state: ChunkState | None) -> bool:
    """Whether a dead letter that may act left its run's work undone, so the run fails
    now rather than at its deadline.

    The broker parks a message on its own (delivery limit, expiry) with no worker to fail
    the run. A worker rejects one of our messages only after its task gave up, on work it
    had started, and records the failure itself unless the ledger was down: so a
    rejected message counts only while that work still shows as started.
    """
    if not verdict.may_act or verdict.death is None or run_state in TERMINAL_RUN_STATES:
        return False
    if chunk_state is ChunkState.DONE:
        return False  # a spare copy of finished work
    if verdict.death.reason != "rejected":
        return True
    started = {
        TASK_PLAN_RUN: run_state is RunState.PLANNING,
        TASK_TRANSFORM_CHUNK: chunk_state is ChunkState.RUNNING,
        TASK_COMMIT_RUN: run_state is RunState.COMMITTING,
    }
    return started.get(verdict.task or "", False)


# -- what the ledger keeps -----------------------------------------------------------------


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with anything a terminal, a log or
    PostgreSQL could trip on (NUL, control characters, lone surrogates) replaced."""
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return "".join(c if c.isprintable() and not _surrogate(c) else "\ufffd" for c in cut)


def _surrogate(character: str) -> bool:
    return "\ud800" <= character <= "\udfff"


def optional_text(value: Any, limit: int) -> str | None:
    """A header's text as the ledger may keep it; None when it is not text at all."""
    return printable(value, limit) if isinstance(value, str) else None


def body_excerpt(body: bytes) -> tuple[bytes, int, str]:
    """What the ledger keeps of a body: (its first BODY_KEPT_BYTES, full size, SHA-256)."""
    return body[:BODY_KEPT_BYTES], len(body), hashlib.sha256(body).hexdigest()


def storable_headers(headers: Any) -> dict[str, Any]:
    """The headers as JSON PostgreSQL can store (no NUL, no NaN, bounded in depth, length
    and size). Anything changed on the way is marked with HEADERS_CUT, so the letter is
    never sent again as if it were the message."""
    cut = _Cut()
    given = headers if isinstance(headers, Mapping) else {"(headers)": headers}
    if len(given) > HEADER_ITEMS_KEPT:
        cut.note(f"more than {HEADER_ITEMS_KEPT} items")
    kept = {
        _storable_text(str(key), cut): _storable(value, 1, cut)
        for key, value in list(given.items())[:HEADER_ITEMS_KEPT]
    }
    size = len(json.dumps(kept))
    if size > HEADERS_KEPT_BYTES:
        # Still too big: keep the small ones, which say what the message is.
        kept = {k: v for k, v in kept.items() if len(json.dumps(v)) <= 1_000}
        cut.changed = True
        cut.notes.append(f"{size} bytes of headers, large ones left out")
    if cut.changed:
        kept[HEADERS_CUT] = "; ".join(cut.notes[:5]) or "changed to be stored"
    return kept


@dataclass
class _Cut:
    changed: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.changed = True
        if what not in self.notes:
            self.notes.append(what)


def _storable(value: Any, depth: int, cut: _Cut) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        cut.note("a non-finite number kept as text")
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()  # how replayed headers have always carried times
    if isinstance(value, bytes | bytearray):
        return _storable_text(bytes(value).decode("utf-8", errors="replace"), cut)
    if isinstance(value, str):
        return _storable_text(value, cut)
    if depth >= HEADER_DEPTH_KEPT:
        cut.note(f"nested deeper than {HEADER_DEPTH_KEPT}")
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        if len(items) > HEADER_ITEMS_KEPT:
            cut.note(f"more than {HEADER_ITEMS_KEPT} items")
        return {
            _storable_text(str(key), cut): _storable(item, depth + 1, cut)
            for key, item in items[:HEADER_ITEMS_KEPT]
        }
    if isinstance(value, list | tuple):
        if len(value) > HEADER_ITEMS_KEPT:
            cut.note(f"more than {HEADER_ITEMS_KEPT} items")
        return [_storable(item, depth + 1, cut) for item in value[:HEADER_ITEMS_KEPT]]
    cut.note("a value of another type kept as text")
    return _storable_text(repr(value), cut)


def _storable_text(text: str, cut: _Cut) -> str:
    kept = text
    if len(kept) > HEADER_TEXT_KEPT:
        cut.note(f"texts cut to {HEADER_TEXT_KEPT} characters")
        kept = kept[:HEADER_TEXT_KEPT] + f"… ({len(text)} characters)"
    if "\x00" in kept or any(_surrogate(c) for c in kept):
        cut.note("NUL characters replaced")
        kept = "".join("\ufffd" if c == "\x00" or _surrogate(c) else c for c in kept)
    return kept


def content_digest(body: bytes, headers: Mapping[str, Any]) -> str:
    """A message's identity when it has no task id to go by: its body and its headers as
    sent (the broker's death headers left out, so dying again keeps it)."""
    digest = hashlib.sha256(body)
    digest.update(json.dumps(sent_headers(headers), sort_keys=True, default=repr).encode())
    return "sha256:" + digest.hexdigest()
