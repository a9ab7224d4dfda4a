"""A dead letter whose run succeeded since is resolved: kept for the record, no longer
dead (so EtlDeadLettersPresent clears by itself)."""

from __future__ import annotations

from typing import Any

from etl.adapters.ledger import Ledger
from etl.domain.dead_letters import DeadLetterState
from etl.domain.runs import RunState
from etl.service.dead_letters import DeadLetterService, resolve_dead_letters
from etl.service.lifecycle import RunService
from etl.service.ports import LedgerPort

from builders import new_run, run_in_state
from fakes import FakeServices, RecordingEnqueue


def letter(fingerprint: str, run_id: str) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "queue": "etl.transform.dlq",
        "task": "etl.transform_chunk",
        "task_id": fingerprint,
        "run_id": run_id,
        "chunk_index": 0,
        "reason": "chunk 0 failed: ValueError: bad row",
        "death_reason": "rejected",
        "death_count": 1,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "headers": {"task": "etl.transform_chunk", "id": fingerprint},
        "body": b"[]",
    }


def succeed(ledger: LedgerPort, run_id: str) -> None:
    for state in (RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING, RunState.SUCCEEDED):
        assert ledger.move_run(run_id, state)


def test_the_letters_of_a_run_that_succeeded_since_are_resolved_and_kept(
    ledger: Ledger,
) -> None:
    retried = new_run(ledger)
    failed = run_in_state(ledger, RunState.FAILED)
    dead_letters = DeadLetterService(
        ledger, "amqp://guest:guest@127.0.0.1:1//", RunService(ledger, RecordingEnqueue())
    )
    first, _ = ledger.record_dead_letter(letter("a", retried))
    second, _ = ledger.record_dead_letter(letter("b", retried))
    still, _ = ledger.record_dead_letter(letter("c", failed))
    gone, _ = ledger.record_dead_letter(letter("d", "no-such-run"))
    ledger.mark_dead_letter(second, DeadLetterState.PURGED)
    assert dead_letters.resolve_succeeded() == 0  # nothing has succeeded yet
    succeed(ledger, retried)
    late, _ = ledger.record_dead_letter(letter("e", retried))  # died after the success

    assert dead_letters.resolve_succeeded() == 1

    assert ledger.get_dead_letter(first).state is DeadLetterState.RESOLVED
    assert ledger.get_dead_letter(second).state is DeadLetterState.PURGED  # handled already
    assert ledger.get_dead_letter(still).state is DeadLetterState.DEAD  # its run still failed
    assert ledger.get_dead_letter(gone).state is DeadLetterState.DEAD
    assert ledger.get_dead_letter(late).state is DeadLetterState.DEAD  # not answered by it
    assert ledger.dead_letter_counts() == {"dead": 3, "purged": 1, "resolved": 1}
    assert dead_letters.resolve_run(retried) == 0  # once only


def test_resolving_works_on_the_ledger_port_alone(fakes: FakeServices) -> None:
    # What RunService.run_succeeded can call with its own ledger (no broker needed).
    run_id = new_run(fakes.ledger)
    first, _ = fakes.ledger.record_dead_letter(letter("a", run_id))
    assert resolve_dead_letters(fakes.ledger, run_id) == 0  # not succeeded
    succeed(fakes.ledger, run_id)
    assert resolve_dead_letters(fakes.ledger, run_id) == 1
    assert fakes.ledger.get_dead_letter(first).state is DeadLetterState.RESOLVED
