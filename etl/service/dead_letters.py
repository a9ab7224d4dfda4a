"""Dead letters as a product feature: record, list, replay and purge parked messages.

Each parked message is handled on its own: it is judged with the worker's own checks
(``etl.domain.dead_letters.judge``), recorded with a bounded excerpt of itself and a
reason, and acknowledged; one that cannot be recorded in full is recorded in part. Only
when the ledger itself is down does the sync stop, leaving the messages in their queues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from etl.adapters.dead_letter_queues import (
    KeepInQueue,
    ParkedMessage,
    SignedBodies,
    drain_dead_letter_queues,
    republish,
)
from etl.adapters.errors import is_transient
from etl.adapters.topology import BrokerTls
from etl.config import MAX_ETA_AHEAD_S, Settings
from etl.domain.dead_letters import (
    HEADERS_CUT,
    REASON_KEPT,
    DeadLetter,
    DeadLetterState,
    Verdict,
    body_excerpt,
    content_digest,
    judge,
    optional_text,
    printable,
    storable_headers,
    work_left_undone,
)
from etl.domain.errors import ChunkNotFound, RunNotFound
from etl.domain.runs import RunState
from etl.service.lifecycle import RunService
from etl.service.ports import LedgerPort

logger = logging.getLogger(__name__)

# The ledger's column sizes for a message's own texts.
_TEXT_KEPT = 200
_ENCODING_KEPT = 64
_COUNT_KEPT = 2**31 - 1
# What a message that could not be recorded in full keeps of its body.
_FALLBACK_BODY_BYTES = 4 * 1024


@dataclass(frozen=True)
class ReplayOutcome:
    """What a replay did, in one line for the operator."""

    dead_letter_id: int
    action: str


class DeadLetterService:
    """Keeps the ledger's record of parked messages and acts on it."""

    def __init__(
        self,
        ledger: LedgerPort,
        broker_url: str,
        runs: RunService,
        broker_ssl: BrokerTls = False,
        *,
        cert_store: str = "",
    ) -> None:
        self.ledger = ledger
        self.broker_url = broker_url
        # Retries the run of a replayed message, and fails the run a parked message left
        # undone: the run lifecycle counts it and admits the runs waiting behind it.
        self.runs = runs
        self.broker_ssl = broker_ssl
        # With signing on, the workers run only bodies signed by a certificate in this
        # store; a dead letter is judged against the same store.
        self.cert_store = cert_store

    @classmethod
    def for_settings(
        cls, ledger: LedgerPort, settings: Settings, runs: RunService
    ) -> DeadLetterService:
        """The service as the deployment is configured (broker, TLS, message signing)."""
        return cls(
            ledger,
            settings.broker_url,
            runs,
            settings.broker_use_ssl,
            cert_store=settings.security_cert_store if settings.message_signing else "",
        )

    def sync(self) -> int:
        """Move what the dead-letter queues hold into the ledger; returns how many.

        Raises only when the broker or the ledger is unreachable, never because of what
        a message holds."""
        signed = SignedBodies(self.cert_store) if self.cert_store else None
        recorded = drain_dead_letter_queues(
            self.broker_url, lambda message: self._record(message, signed), ssl=self.broker_ssl
        )
        # A backstop for the runs that succeeded since (RunService.run_succeeded resolves
        # its own run's letters at once): every sync, so the alert clears by itself.
        self.resolve_succeeded()
        return recorded

    def resolve_run(self, run_id: str) -> int:
        """resolve_dead_letters of ``run_id`` on this service's ledger."""
        return resolve_dead_letters(self.ledger, run_id)

    def resolve_succeeded(self) -> int:
        """resolve_run for every run with dead letters that has succeeded; returns how many."""
        run_ids = {
            letter.run_id
            for letter in self.ledger.list_dead_letters(limit=100_000)
            if letter.run_id is not None
        }
        return sum(self.resolve_run(run_id) for run_id in sorted(run_ids))

    def _record(self, message: ParkedMessage, signed: SignedBodies | None) -> None:
        try:
            verdict = self._judge(message, signed)
            reason = verdict.reason(self._ledger_error(verdict))
            _, created = self.ledger.record_dead_letter(_record_of(message, verdict, reason))
        except Exception as exc:
            if is_transient(exc):
                raise  # the ledger is down: not the message's fault; it stays queued
            logger.exception("could not record a dead letter of %s in full", message.queue)
            self._record_in_part(message, exc)
            return
        if created and verdict.may_act and verdict.run_id is not None:
            try:
                self._fail_what_it_left_undone(verdict, verdict.run_id, reason)
            except Exception as exc:
                if is_transient(exc):
                    raise
                # Recorded all the same; the reconciler's deadline ends the run.
                logger.exception("could not fail what dead letter of %s left undone", message.queue)

    def _judge(self, message: ParkedMessage, signed: SignedBodies | None) -> Verdict:
        try:
            return judge(
                message.headers,
                message.properties,
                message.content_type,
                message.body,
                source_queue=message.queue,
                open_signed=signed.open if signed is not None else None,
                max_eta_s=MAX_ETA_AHEAD_S,
            )
        except Exception as exc:
            # A shape no check foresaw: the letter is still recorded, and never trusted.
            logger.exception("could not check a dead letter of %s", message.queue)
            return Verdict(
                death=None,
                death_problem=None,
                contract_problem=f"it could not be checked ({type(exc).__name__})",
                task=None,
                run_id=None,
                chunk_index=None,
            )

    def _record_in_part(self, message: ParkedMessage, error: Exception) -> None:
        body, size, sha256 = body_excerpt(message.body)
        values = {
            "fingerprint": "sha256:" + sha256,
            "queue": message.queue,
            "task": None,
            "task_id": None,
            "run_id": None,
            "chunk_index": None,
            "reason": f"could not be recorded in full ({type(error).__name__}); kept in part",
            "death_reason": None,
            "death_count": 1,
            "content_type": None,
            "content_encoding": None,
            "headers": {HEADERS_CUT: "left out: the message could not be recorded"},
            "body": body[:_FALLBACK_BODY_BYTES],
            "body_size": size,
            "body_sha256": sha256,
        }
        try:
            self.ledger.record_dead_letter(values)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Not even its excerpt could be stored: leave it queued (logged) and go on.
            logger.exception("left a dead letter of %s in its queue", message.queue)
            raise KeepInQueue from exc

    def _fail_what_it_left_undone(self, verdict: Verdict, run_id: str, reason: str) -> None:
        # The broker parks a message on its own too (a quorum queue's delivery limit, an
        # expiry): then no worker failed the run, which would wait for its deadline.
        chunk_index = verdict.chunk_index
        try:
            run = self.ledger.get_run(run_id)
            chunk = self.ledger.get_chunk(run_id, chunk_index) if chunk_index is not None else None
        except LookupError:
            return
        if not work_left_undone(verdict, run.state, chunk.state if chunk else None):
            return
        if chunk_index is not None:
            self.ledger.fail_chunk(run_id, chunk_index, f"dead-lettered: {reason}")
            why = f"chunk {chunk_index} dead-lettered: {reason}"
        else:
            why = f"dead-lettered: {reason}"
        self.runs.end_run(run_id, RunState.FAILED, why)

    def _ledger_error(self, verdict: Verdict) -> str | None:
        run_id, chunk_index = verdict.run_id, verdict.chunk_index
        if run_id is None:
            return None
        try:
            run = self.ledger.get_run(run_id)
            if chunk_index is not None:
                return self.ledger.get_chunk(run_id, chunk_index).error
        except RunNotFound:
            return f"run {run_id} is not in the ledger"
        except ChunkNotFound:
            return f"run {run_id} has no chunk {chunk_index}"
        return run.reason

    def list_letters(
        self, *, run_id: str | None = None, include_handled: bool = False
    ) -> list[DeadLetter]:
        """Dead letters, newest first (after syncing from the queues)."""
        self.sync()
        state = None if include_handled else DeadLetterState.DEAD
        return self.ledger.list_dead_letters(state=state, run_id=run_id)

    def replay(self, dead_letter_id: int) -> ReplayOutcome:
        """Send a parked message's work again, once: a second replay, or one at the same
        time, does nothing.

        A message about a failed run retries the run (its unfinished chunks and then the
        commit) rather than re-sending one chunk, which could never commit on its own.
        """
        letter = self.ledger.get_dead_letter(dead_letter_id)
        if letter.state is not DeadLetterState.DEAD:
            return ReplayOutcome(letter.id, f"already {letter.state}; nothing sent")
        if not letter.kept_whole:
            return ReplayOutcome(
                letter.id,
                f"not sent: the ledger holds only part of it ({len(letter.body)} of "
                f"{letter.body_size} body bytes, headers changed to be stored)",
            )
        # Claimed first, so of replays at once exactly one acts; put back if what it
        # sends is refused, so a broker or ledger failure does not lose the work.
        if not self.ledger.mark_dead_letter(letter.id, DeadLetterState.REPLAYED, replayed=True):
            return ReplayOutcome(letter.id, "already handled by someone else; nothing sent")
        try:
            if letter.run_id is not None and self._run_state(letter.run_id) is RunState.FAILED:
                return self._retry_its_run(letter, letter.run_id)
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

    def _retry_its_run(self, letter: DeadLetter, run_id: str) -> ReplayOutcome:
        self.runs.retry_run(run_id)
        # The retry redoes every unfinished chunk: the run's other letters are handled.
        for sibling in self.ledger.list_dead_letters(run_id=run_id):
            self.ledger.mark_dead_letter(sibling.id, DeadLetterState.REPLAYED, replayed=True)
        return ReplayOutcome(letter.id, f"retried run {run_id}")

    def replay_all(self, *, run_id: str | None = None) -> list[ReplayOutcome]:
        """Replay every dead letter (of one run, if given); one that cannot be sent is
        reported and the others are still replayed."""
        self.sync()
        outcomes = []
        for letter in self.ledger.list_dead_letters(run_id=run_id, limit=100_000):
            try:
                outcomes.append(self.replay(letter.id))
            except Exception as exc:
                if is_transient(exc):
                    raise
                logger.exception("could not replay dead letter %d", letter.id)
                shown = printable(f"{type(exc).__name__}: {exc}", 300)
                outcomes.append(ReplayOutcome(letter.id, f"not sent: {shown}"))
        return outcomes

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


def resolve_dead_letters(ledger: LedgerPort, run_id: str) -> int:
    """Mark resolved (kept for the record) the dead letters of ``run_id`` that died
    before it succeeded; returns how many. Called when a run succeeds.

    A letter that died after the success (a late duplicate, or a forged message naming
    the run) stays dead: the success did not answer it."""
    try:
        run = ledger.get_run(run_id)
    except RunNotFound:
        return 0
    if run.state is not RunState.SUCCEEDED or run.finished_at is None:
        return 0
    letters = ledger.list_dead_letters(run_id=run_id, limit=100_000)
    return sum(
        ledger.mark_dead_letter(letter.id, DeadLetterState.RESOLVED)
        for letter in letters
        if letter.last_seen_at <= run.finished_at
    )


def _record_of(message: ParkedMessage, verdict: Verdict, reason: str) -> dict[str, Any]:
    """The ledger's record of a message: every field bounded and storable."""
    headers = storable_headers(message.headers)
    raw = message.headers if isinstance(message.headers, dict) else {}
    task_id = optional_text(raw.get("id"), _TEXT_KEPT)
    body, size, sha256 = body_excerpt(message.body)
    # A message of ours keeps one record however often it dies (its task id); anything
    # else is known by its content, so it can never take over a real message's record.
    trusted_id = verdict.trusted and task_id is not None and task_id == raw.get("id")
    fingerprint = task_id if trusted_id and task_id else content_digest(message.body, headers)
    death = verdict.death
    return {
        "fingerprint": fingerprint,
        "queue": message.queue,
        "task": optional_text(raw.get("task"), _TEXT_KEPT),
        "task_id": task_id,
        "run_id": verdict.run_id,
        "chunk_index": verdict.chunk_index,
        "reason": printable(reason, REASON_KEPT),
        "death_reason": printable(death.reason, _ENCODING_KEPT) if death else None,
        "death_count": min(max(death.count, 1), _COUNT_KEPT) if death else 1,
        "content_type": optional_text(message.content_type, _TEXT_KEPT),
        "content_encoding": optional_text(message.content_encoding, _ENCODING_KEPT),
        "headers": headers,
        "body": body,
        "body_size": size,
        "body_sha256": sha256,
    }
