"""Dead letters as a product feature: record, list, replay and purge parked messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etl.adapters.dead_letters import ParkedMessage, drain_dead_letter_queues, republish
from etl.adapters.topology import BrokerTls
from etl.celery_app import TASK_ROUTES
from etl.domain.dead_letters import DeadLetter, DeadLetterState, explain, run_and_chunk
from etl.domain.runs import TERMINAL_RUN_STATES, ChunkState, RunState
from etl.ledger import Ledger, RunNotFound

KNOWN_TASKS = frozenset(TASK_ROUTES)


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did, in one line for the operator."""

    dead_letter_id: int
    action: str


class DeadLetterService:
    """Keeps the ledger's record of parked messages and acts on it."""

    def __init__(
        self,
        ledger: Ledger,
        broker_url: str,
        retry_run: Callable[[str], Any],
        broker_ssl: BrokerTls = False,
    ) -> None:
        self.ledger = ledger
        self.broker_url = broker_url
        self.retry_run = retry_run
        self.broker_ssl = broker_ssl

    def sync(self) -> int:
        """Move what the dead-letter queues hold into the ledger; returns how many."""
        return drain_dead_letter_queues(self.broker_url, self._record, ssl=self.broker_ssl)

    def _record(self, message: ParkedMessage) -> None:
        task = message.headers.get("task")
        task_id = message.headers.get("id")
        decoded, args = _decode_args(message)
        run_id, chunk_index = run_and_chunk(task, args) if decoded else (None, None)
        reason = explain(
            task=task,
            known_tasks=KNOWN_TASKS,
            decoded=decoded,
            content_type=message.content_type,
            death_reason=message.death_reason,
            ledger_error=self._ledger_error(run_id, chunk_index),
        )
        _, created = self.ledger.record_dead_letter(
            {
                "fingerprint": str(task_id or message.message_id or _digest(message)),
                "queue": message.queue,
                "task": task,
                "task_id": task_id,
                "run_id": run_id,
                "chunk_index": chunk_index,
                "reason": reason,
                "death_reason": message.death_reason,
                "death_count": message.death_count,
                "content_type": message.content_type,
                "content_encoding": message.content_encoding,
                "headers": message.headers,
                "body": message.body,
            }
        )
        if created and run_id is not None:
            self._fail_what_it_left_undone(run_id, chunk_index, reason)

    def _fail_what_it_left_undone(self, run_id: str, chunk_index: int | None, reason: str) -> None:
        # The broker parks a message on its own too (a quorum queue's delivery limit, an
        # expiry): then no worker failed the run, which would wait for its deadline.
        try:
            run = self.ledger.get_run(run_id)
            if run.state in TERMINAL_RUN_STATES:
                return
            if chunk_index is not None:
                if self.ledger.get_chunk(run_id, chunk_index).state is ChunkState.DONE:
                    return  # a spare copy of finished work
                self.ledger.fail_chunk(run_id, chunk_index, f"dead-lettered: {reason}")
                why = f"chunk {chunk_index} dead-lettered: {reason}"
            else:
                why = f"dead-lettered: {reason}"
        except LookupError:
            return
        self.ledger.fail_run(run_id, why)

    def _ledger_error(self, run_id: str | None, chunk_index: int | None) -> str | None:
        if run_id is None:
            return None
        try:
            if chunk_index is not None:
                return self.ledger.get_chunk(run_id, chunk_index).error
            return self.ledger.get_run(run_id).reason
        except LookupError:
            return f"run {run_id} is not in the ledger"

    def list_letters(
        self, *, run_id: str | None = None, include_handled: bool = False
    ) -> list[DeadLetter]:
        """Dead letters, newest first (after syncing from the queues)."""
        self.sync()
        state = None if include_handled else DeadLetterState.DEAD
        return self.ledger.list_dead_letters(state=state, run_id=run_id)

    def replay(self, dead_letter_id: int) -> ReplayOutcome:
        """Send a parked message's work again, once: a second replay does nothing.

        A message about a failed run retries the run (its unfinished chunks and then the
        commit) rather than re-sending one chunk, which could never commit on its own.
        """
        letter = self.ledger.get_dead_letter(dead_letter_id)
        if letter.state is not DeadLetterState.DEAD:
            return ReplayOutcome(letter.id, f"already {letter.state}; nothing sent")
        if letter.run_id is not None and self._run_state(letter.run_id) is RunState.FAILED:
            self.retry_run(letter.run_id)
            for sibling in self.ledger.list_dead_letters(run_id=letter.run_id):
                self.ledger.mark_dead_letter(sibling.id, DeadLetterState.REPLAYED, replayed=True)
            return ReplayOutcome(letter.id, f"retried run {letter.run_id}")
        # Marked first, so two replays at once send it once; unmarked if the send fails,
        # so a broker that refused it does not lose the work.
        if not self.ledger.mark_dead_letter(letter.id, DeadLetterState.REPLAYED, replayed=True):
            return ReplayOutcome(letter.id, "already handled by someone else; nothing sent")
        try:
            republish(
                self.broker_url,
                queue=letter.queue,
                body=letter.body,
                headers=letter.headers,
                content_type=letter.content_type,
                content_encoding=letter.content_encoding,
                ssl=self.broker_ssl,
            )
        except Exception:
            self.ledger.reopen_dead_letter(letter.id)
            raise
        return ReplayOutcome(letter.id, f"republished to {letter.queue}")

    def replay_all(self, *, run_id: str | None = None) -> list[ReplayOutcome]:
        """Replay every dead letter (of one run, if given)."""
        self.sync()
        return [self.replay(letter.id) for letter in self.ledger.list_dead_letters(run_id=run_id)]

    def purge(self, *, run_id: str | None = None) -> int:
        """Mark dead letters purged (kept for the record, never replayed); returns how many."""
        self.sync()
        letters = self.ledger.list_dead_letters(run_id=run_id, limit=100_000)
        return sum(
            self.ledger.mark_dead_letter(letter.id, DeadLetterState.PURGED) for letter in letters
        )

    def _run_state(self, run_id: str) -> RunState | None:
        try:
            return self.ledger.get_run(run_id).state
        except RunNotFound:
            return None


def _decode_args(message: ParkedMessage) -> tuple[bool, Any]:
    if message.content_type != "application/json":
        return False, None
    try:
        body = json.loads(message.body)
    except ValueError:
        return False, None
    # Celery protocol 2: [args, kwargs, embed].
    return True, body[0] if isinstance(body, list) and body else None


def _digest(message: ParkedMessage) -> str:
    digest = hashlib.sha256(message.body)
    digest.update(json.dumps(message.headers, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()
