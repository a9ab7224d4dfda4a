"""The task message contract: every header Celery reads and every argument our tasks take
is checked, and a refusal names what is wrong."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.domain.task_messages import (
    MAX_BODY_BYTES,
    MAX_CHUNK_INDEX,
    TASK_PLAN_RUN,
    TASK_START_SCHEDULED_RUN,
    TASK_TRANSFORM_CHUNK,
    InvalidTaskMessage,
    check_arguments,
    check_headers,
    check_json_body,
    check_json_message,
)

RUN_ID = str(uuid.uuid4())
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def headers(**changes: Any) -> dict[str, Any]:
    """Headers as Celery 5 sends them for a transform_chunk message."""
    base: dict[str, Any] = {
        "lang": "py",
        "task": TASK_TRANSFORM_CHUNK,
        "id": str(uuid.uuid4()),
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": str(uuid.uuid4()),
        "parent_id": None,
        "argsrepr": f"['{RUN_ID}', 0]",
        "kwargsrepr": "{}",
        "origin": "gen1@host",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        "run_id": RUN_ID,
    }
    base.update(changes)
    return base


def body(args: Any, kwargs: Any = None, embed: Any = None) -> bytes:
    embed = (
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
        if embed is None
        else embed
    )
    return json.dumps([args, {} if kwargs is None else kwargs, embed]).encode()


def refusal(**kwargs: Any) -> str:
    with pytest.raises(InvalidTaskMessage) as caught:
        check_json_message(now=NOW, max_eta_s=360, **kwargs)
    return str(caught.value)


def test_a_message_as_celery_sends_it_passes_and_binds_its_arguments() -> None:
    bound = check_json_message(headers(), body([RUN_ID, 7]), now=NOW, max_eta_s=360)

    assert bound == {"run_id": RUN_ID, "chunk_index": 7}


@pytest.mark.parametrize(
    ("header", "value", "named"),
    [
        ("task", ["etl.plan_run"], "header 'task' must be a string, got list"),
        ("task", {"a": 1}, "header 'task' must be a string, got dict"),
        ("id", ["1"], "header 'id' must be a string"),
        ("id", "x" * 2_000, "header 'id' must be at most"),
        ("root_id", 5, "header 'root_id' must be a string"),
        ("parent_id", [], "header 'parent_id'"),
        ("group", {}, "header 'group'"),
        ("eta", 12, "header 'eta' must be a string"),
        ("eta", "tomorrow", "header 'eta' must be an ISO 8601 time"),
        ("expires", ["x"], "header 'expires'"),
        ("retries", "3", "header 'retries' must be an integer"),
        ("retries", True, "header 'retries' must be an integer"),
        ("retries", -1, "header 'retries' must be between"),
        ("timelimit", "60", "header 'timelimit'"),
        ("timelimit", [1, 2, 3], "header 'timelimit'"),
        ("timelimit", ["a", None], "header 'timelimit'"),
        ("argsrepr", "x" * 20_000, "header 'argsrepr' must be at most"),
        ("kwargsrepr", 1, "header 'kwargsrepr'"),
        ("shadow", 1, "header 'shadow'"),
        ("ignore_result", "yes", "header 'ignore_result'"),
        ("run_id", "not-a-uuid", "header 'run_id' must be a run id"),
        ("run_id", "x" * 20_000_000, "header 'run_id' must be a run id"),
        ("group_index", "1", "header 'group_index'"),
        ("stamped_headers", "a", "header 'stamped_headers'"),
    ],
)
def test_a_malformed_header_is_refused_naming_it(header: str, value: Any, named: str) -> None:
    assert named in refusal(headers=headers(**{header: value}), body=body([RUN_ID, 0]))


def test_headers_that_are_not_a_table_are_refused() -> None:
    assert "headers must be a table" in refusal(headers=["task"], body=body([RUN_ID, 0]))


def test_a_protocol_1_message_without_a_task_header_is_refused() -> None:
    legacy = headers()
    del legacy["task"]

    assert "protocol 1" in refusal(headers=legacy, body=b'{"task": "etl.plan_run"}')


def test_an_unknown_task_is_refused_by_name() -> None:
    reason = refusal(headers=headers(task="etl.drop_all_tables"), body=body([]))

    assert reason == "unknown task 'etl.drop_all_tables'"


def test_an_eta_beyond_what_a_worker_may_hold_is_refused_and_a_retry_eta_is_not() -> None:
    soon = (NOW + timedelta(seconds=300)).isoformat()
    later = (NOW + timedelta(days=30)).isoformat()

    check_headers(headers(eta=soon), now=NOW, max_eta_s=360)
    with pytest.raises(InvalidTaskMessage, match="header 'eta' is 2592000 s ahead"):
        check_headers(headers(eta=later), now=NOW, max_eta_s=360)


def test_a_naive_eta_is_read_as_utc() -> None:
    naive_later = (NOW + timedelta(hours=2)).replace(tzinfo=None).isoformat()

    with pytest.raises(InvalidTaskMessage, match="eta"):
        check_headers(headers(eta=naive_later), now=NOW, max_eta_s=360)


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ([12345, "zero"], {}, "argument run_id must be a string, got int"),
        ([RUN_ID, "zero"], {}, "argument chunk_index must be an integer, got str"),
        ([RUN_ID, True], {}, "argument chunk_index must be an integer, got bool"),
        ([RUN_ID, 99_999_999_999], {}, "argument chunk_index must be between 0 and"),
        ([RUN_ID, -1], {}, "argument chunk_index must be between 0 and"),
        (["x" * 37, 0], {}, "argument run_id must be a UUID"),
        ([RUN_ID[:-1] + "\x00", 0], {}, "argument run_id must be a UUID"),
        ([RUN_ID.upper(), 0], {}, "argument run_id must be a UUID"),
        ([RUN_ID], {}, "etl.transform_chunk is missing argument chunk_index"),
        ([RUN_ID, 0, 1], {}, "etl.transform_chunk takes 2 argument(s), got 3 positional"),
        ([RUN_ID, 0], {"force": True}, "etl.transform_chunk has no argument 'force'"),
        ([RUN_ID, 0], {"chunk_index": 1}, "argument chunk_index is given twice"),
        ({"run_id": RUN_ID}, {}, "the arguments must be a list, got dict"),
        ([RUN_ID, 0], [], "the keyword arguments must be an object, got list"),
    ],
)
def test_a_wrong_argument_is_refused_naming_it(args: Any, kwargs: Any, named: str) -> None:
    with pytest.raises(InvalidTaskMessage) as caught:
        check_arguments(TASK_TRANSFORM_CHUNK, args, kwargs)

    assert named in str(caught.value)


def test_a_20_mb_run_id_is_named_by_a_short_excerpt() -> None:
    with pytest.raises(InvalidTaskMessage) as caught:
        check_arguments(TASK_PLAN_RUN, ["r" * 20_000_000], {})

    assert len(str(caught.value)) < 200
    assert "20000000 characters" in str(caught.value)


def test_keyword_arguments_bind_like_a_call() -> None:
    assert check_arguments(TASK_TRANSFORM_CHUNK, [RUN_ID], {"chunk_index": 3}) == {
        "run_id": RUN_ID,
        "chunk_index": 3,
    }
    assert check_arguments(TASK_START_SCHEDULED_RUN, ["orders_daily"], {}) == {
        "pipeline": "orders_daily"
    }
    with pytest.raises(InvalidTaskMessage, match="interval must be a YYYY-MM-DD date, an ISO 8601"):
        check_arguments(TASK_START_SCHEDULED_RUN, ["orders_daily", "yesterday"], {})
    with pytest.raises(InvalidTaskMessage, match="must be a pipeline name"):
        check_arguments(TASK_START_SCHEDULED_RUN, ["Orders; DROP"], {})


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b'[["run", 0], {}, {', "the body is not valid JSON"),
        (b"\xff\xfe\x00", "the body is not valid JSON"),
        (b'{"args": []}', "the body must be a list [args, kwargs, embed]"),
        (b"[[], {}]", "the body must be a list [args, kwargs, embed]"),
        (b'[[], {}, {"callbacks": "rm -rf"}]', "embed"),
        (b" " * (MAX_BODY_BYTES + 1), "over"),
    ],
)
def test_a_malformed_body_is_refused_naming_what_is_wrong(raw: bytes, named: str) -> None:
    with pytest.raises(InvalidTaskMessage) as caught:
        check_json_body(TASK_TRANSFORM_CHUNK, raw)

    assert named in str(caught.value)


def test_the_largest_chunk_index_accepted_is_below_the_bound() -> None:
    assert check_arguments(TASK_TRANSFORM_CHUNK, [RUN_ID, MAX_CHUNK_INDEX - 1], {})
    with pytest.raises(InvalidTaskMessage):
        check_arguments(TASK_TRANSFORM_CHUNK, [RUN_ID, MAX_CHUNK_INDEX], {})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(["task", "id", "root_id", "parent_id", "group", "eta", "expires",
                            "retries", "timelimit", "argsrepr", "kwargsrepr", "shadow",
                            "origin", "group_index", "ignore_result", "run_id"]),
    value=JSON_VALUES,
    args=JSON_VALUES,
)  # fmt: skip
def test_any_header_value_and_any_arguments_either_pass_or_are_refused_by_name(
    header: str, value: Any, args: Any
) -> None:
    # The contract never raises anything but InvalidTaskMessage, whatever a publisher sends.
    try:
        check_json_message(headers(**{header: value}), body(args), now=NOW, max_eta_s=360)
    except InvalidTaskMessage as refused:
        assert str(refused)
