from __future__ import annotations

from typing import Any

import pytest

from etl.domain.dead_letters import explain, run_and_chunk

KNOWN = frozenset({"etl.plan_run", "etl.transform_chunk", "etl.commit_run"})
RUN_ID = "0b6c2f1e-2f7d-4c55-9a38-6f0d5b7a1e11"


def reason(**changes: Any) -> str:
    """explain() for a readable, known task message with no ledger error, as changed."""
    values: dict[str, Any] = {
        "task": "etl.transform_chunk",
        "known_tasks": KNOWN,
        "decoded": True,
        "content_type": "application/json",
        "death_reason": "rejected",
        "ledger_error": None,
    }
    values.update(changes)
    return explain(**values)


# -- explain -------------------------------------------------------------------------------


def test_a_quorum_delivery_limit_is_explained_as_too_many_deliveries() -> None:
    # The broker's own reason wins even over an error the ledger recorded.
    assert (
        reason(death_reason="delivery_limit", ledger_error="chunk 3 failed: boom")
        == "delivered too many times (quorum queue delivery limit)"
    )


def test_an_expired_message_is_explained_as_expired_before_a_worker_took_it() -> None:
    assert (
        reason(death_reason="expired", content_type="application/x-python-serialize")
        == "expired before a worker took it"
    )


@pytest.mark.parametrize(
    "content_type", ["application/x-python-serialize", "application/x-yaml", "text/plain"]
)
def test_a_non_json_content_type_is_explained_as_refused_naming_the_type(
    content_type: str,
) -> None:
    explained = reason(content_type=content_type, decoded=False, task=None)
    assert explained == f"content type {content_type!r} is refused (JSON only)"


def test_a_message_without_a_content_type_is_not_called_a_refused_type() -> None:
    assert "content type" not in reason(content_type=None)


def test_an_undecodable_json_body_is_explained_as_not_valid_json() -> None:
    assert reason(decoded=False) == "the body is not valid JSON"


def test_a_message_without_a_task_header_is_explained_as_not_a_task_message() -> None:
    assert reason(task=None) == "not a task message (no task header)"


def test_an_unregistered_task_is_explained_naming_the_task() -> None:
    assert reason(task="etl.drop_tables") == "unknown task 'etl.drop_tables'"


def test_the_error_the_ledger_recorded_is_the_reason_for_a_known_task() -> None:
    recorded = "chunk 3 failed: ValueError: bad row"
    assert reason(ledger_error=recorded) == recorded


@pytest.mark.parametrize("ledger_error", [None, ""])
def test_without_any_other_clue_the_reason_points_at_the_worker_log(
    ledger_error: str | None,
) -> None:
    assert reason(ledger_error=ledger_error) == (
        "rejected by the worker (see its log; the arguments may be of the wrong type)"
    )


# -- run_and_chunk -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[RUN_ID, 3], (RUN_ID, 3), [RUN_ID, 3, "extra"]])
def test_a_transform_message_names_its_run_and_chunk(args: Any) -> None:
    assert run_and_chunk("etl.transform_chunk", args) == (RUN_ID, 3)


@pytest.mark.parametrize("index", [True, False, "3", 3.0, None])
def test_a_transform_chunk_index_that_is_not_an_int_is_not_taken_as_a_chunk(index: Any) -> None:
    # JSON true is a Python bool, and bool is a subclass of int: it must not pass for 1.
    assert run_and_chunk("etl.transform_chunk", [RUN_ID, index]) == (None, None)


def test_a_transform_message_without_a_chunk_index_names_nothing() -> None:
    assert run_and_chunk("etl.transform_chunk", [RUN_ID]) == (None, None)


@pytest.mark.parametrize("task", ["etl.plan_run", "etl.commit_run"])
def test_plan_and_commit_messages_name_their_run_and_no_chunk(task: str) -> None:
    assert run_and_chunk(task, [RUN_ID]) == (RUN_ID, None)


@pytest.mark.parametrize(
    ("task", "args"),
    [
        ("etl.drop_tables", [RUN_ID, 3]),
        (None, [RUN_ID, 3]),
        ("etl.plan_run", {"run_id": RUN_ID}),
        ("etl.plan_run", RUN_ID),
        ("etl.plan_run", None),
        ("etl.plan_run", []),
        ("etl.transform_chunk", ()),
        ("etl.plan_run", [42]),
        ("etl.transform_chunk", [None, 3]),
        ("etl.commit_run", [[RUN_ID]]),
    ],
    ids=[
        "unknown-task",
        "no-task",
        "dict-args",
        "str-args",
        "none-args",
        "empty-list",
        "empty-tuple",
        "int-run-id",
        "none-run-id",
        "list-run-id",
    ],
)
def test_a_message_that_does_not_say_which_run_names_nothing(task: str | None, args: Any) -> None:
    assert run_and_chunk(task, args) == (None, None)
