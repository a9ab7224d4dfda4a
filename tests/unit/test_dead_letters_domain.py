"""Dead letters judged by the worker's own checks: true, specific reasons; run ids only
from arguments that pass; a letter acts only when it is ours and died where and why the
broker says; what the ledger keeps of a hostile message stays small and storable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etl.domain.dead_letters import (
    BODY_KEPT_BYTES,
    HEADERS_CUT,
    HEADERS_KEPT_BYTES,
    DeadLetter,
    DeadLetterState,
    UnverifiedBody,
    Verdict,
    body_excerpt,
    judge,
    printable,
    read_death,
    storable_headers,
    work_left_undone,
)
from etl.domain.runs import ChunkState, RunState

RUN_ID = "0b6c2f1e-2f7d-4c55-9a38-6f0d5b7a1e11"
DIED_AT = datetime(2026, 3, 1, 12, 0, 0)  # naive UTC, as py-amqp decodes a timestamp
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def death(queue: str = "etl.transform", reason: str = "rejected", **changes: Any) -> dict[str, Any]:
    """An x-death entry as RabbitMQ writes it."""
    entry = {"count": 1, "reason": reason, "queue": queue, "time": DIED_AT, "exchange": "etl",
             "routing-keys": [queue]}  # fmt: skip
    entry.update(changes)
    return entry


def headers(task: Any = "etl.transform_chunk", **changes: Any) -> dict[str, Any]:
    values = {"task": task, "id": "6e1b7f36-1b7a-4e55-8d1c-2b4f1c1d9a01", "lang": "py",
              "retries": 0, "x-death": [death()]}  # fmt: skip
    values.update(changes)
    return {key: value for key, value in values.items() if value is not ...}


def body(*args: Any, kwargs: dict[str, Any] | None = None) -> bytes:
    return json.dumps([list(args), kwargs or {}, EMBED]).encode()


def verdict(
    message_headers: Any = None,
    message_body: bytes | None = None,
    *,
    content_type: str | None = "application/json",
    queue: str = "etl.transform",
    open_signed: Any = None,
) -> Verdict:
    return judge(
        headers() if message_headers is None else message_headers,
        {},
        content_type,
        body(RUN_ID, 3) if message_body is None else message_body,
        source_queue=queue,
        open_signed=open_signed,
        max_eta_s=360,
    )


# -- the death record ----------------------------------------------------------------------


def test_the_first_death_entry_is_the_latest_death_and_its_time_is_utc() -> None:
    found, problem = read_death(
        {"x-death": [death(), death("etl.plan", "expired")]}, "etl.transform"
    )

    assert problem is None and found is not None
    assert (found.queue, found.reason, found.count) == ("etl.transform", "rejected", 1)
    assert found.time == DIED_AT.replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("x_death", "words"),
    [
        (..., "no death record"),
        ("rejected", "malformed"),
        ([], "malformed"),
        (["etl.transform"], "malformed"),
        ([death(time=...)], "malformed"),  # RabbitMQ always writes the time
        ([death(time="2026-03-01T12:00:00")], "malformed"),
        ([death(count="1")], "malformed"),
        ([death(queue=["etl.transform"])], "malformed"),
        ([death("etl.plan")], "names queue 'etl.plan', not 'etl.transform'"),
        ([death("x" * 10_000)], "names queue"),
    ],
    ids=[
        "none",
        "text",
        "empty",
        "not-a-table",
        "no-time",
        "time-as-text",
        "count-as-text",
        "queue-list",
        "other-queue",
        "huge-queue",
    ],
)
def test_a_death_record_not_from_this_work_queue_is_not_gone_by(x_death: Any, words: str) -> None:
    raw = {} if x_death is ... else {"x-death": x_death}
    if isinstance(x_death, list) and x_death and isinstance(x_death[0], dict):
        raw["x-death"] = [{k: v for k, v in x_death[0].items() if v is not ...}]

    found, problem = read_death(raw, "etl.transform")

    assert found is None and problem is not None and words in problem
    assert len(problem) < 300


# -- judging: the worker's checks, at the moment it died ------------------------------------


def test_one_of_our_messages_names_its_run_and_chunk() -> None:
    judged = verdict()

    assert judged.trusted and judged.may_act
    assert (judged.task, judged.run_id, judged.chunk_index) == ("etl.transform_chunk", RUN_ID, 3)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["r" * 37, 3], "argument run_id must be a UUID"),
        ([RUN_ID[:-1] + "\x00", 3], "argument run_id must be a UUID"),
        ([RUN_ID, 99_999_999_999], "argument chunk_index must be between 0 and"),
        ([RUN_ID, True], "argument chunk_index must be an integer, got bool"),
        ([12345, "zero"], "argument run_id must be a string, got int"),
        ([RUN_ID], "etl.transform_chunk is missing argument chunk_index"),
        ([RUN_ID, 3, 4], "takes 2 argument(s), got 3 positional"),
    ],
    ids=[
        "run-id-37",
        "run-id-nul",
        "chunk-index-huge",
        "chunk-index-bool",
        "wrong-types",
        "too-few",
        "too-many",
    ],
)
def test_a_bad_argument_is_named_and_gives_no_run(args: list[Any], words: str) -> None:
    judged = verdict(message_body=body(*args))

    assert not judged.trusted and not judged.may_act
    assert (judged.run_id, judged.chunk_index) == (None, None)
    assert words in judged.reason()
    assert "\x00" not in judged.reason()


def test_a_twenty_megabyte_run_id_is_refused_by_size_and_its_reason_stays_short() -> None:
    judged = verdict(message_body=body("r" * 20_000_000, 0))

    assert judged.run_id is None
    assert "the body is 20000" in judged.reason() and "over 262144" in judged.reason()


def test_an_unknown_keyword_argument_is_named() -> None:
    judged = verdict(message_body=body(RUN_ID, 3, kwargs={"force": True}))

    assert "has no argument 'force'" in judged.reason()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"task": ["etl.plan_run"]}, "header 'task' must be a string, got list"),
        ({"id": {"a": 1}}, "header 'id' must be a string, got dict"),
        ({"retries": "3"}, "header 'retries' must be an integer"),
        ({"eta": "tomorrow"}, "header 'eta' must be an ISO 8601 time"),
        ({"argsrepr": "a" * 50_000}, "header 'argsrepr' must be at most"),
        ({"root_id": "a\x00b"}, "header 'root_id' must not contain NUL"),
        ({"compression": "application/x-gzip"}, "header 'compression' is refused"),
        ({"task": "etl.drop_all_tables"}, "unknown task 'etl.drop_all_tables'"),
        ({"task": ...}, "no 'task' header: a protocol 1 message"),
    ],
    ids=[
        "task-list",
        "id-dict",
        "retries-text",
        "eta-garbage",
        "argsrepr-huge",
        "nul",
        "compressed",
        "unknown-task",
        "protocol-1",
    ],
)
def test_a_malformed_header_is_named(changes: dict[str, Any], words: str) -> None:
    judged = verdict(headers(**changes))

    assert not judged.trusted and judged.run_id is None
    assert words in judged.reason()


def test_headers_that_are_not_a_table_are_named() -> None:
    assert "the headers must be a table" in verdict(["task"]).reason()


def test_an_eta_refused_when_it_died_is_refused_now_though_it_has_passed() -> None:
    # A day ahead of its death: the consumer refused it then; measured against today the
    # ETA is long past, and the message would look like one of ours.
    eta = (DIED_AT + timedelta(days=1)).isoformat() + "+00:00"

    judged = verdict(headers(eta=eta))

    assert not judged.trusted
    assert "header 'eta' is 86400 s ahead" in judged.reason()


def test_an_eta_within_bounds_at_its_death_passes() -> None:
    assert verdict(headers(eta=(DIED_AT + timedelta(seconds=60)).isoformat())).trusted


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("application/x-python-serialize", "content type 'application/x-python-serialize' is "
         "refused (accepted: application/json)"),
        (None, "content type 'None' is refused"),
        ("application/data", "content type 'application/data' is refused"),
    ],
)  # fmt: skip
def test_without_signing_only_json_is_read(content_type: str | None, words: str) -> None:
    judged = verdict(content_type=content_type, message_body=b"\x80\x04\x95")

    assert not judged.trusted and words in judged.reason()


def test_a_body_that_is_not_json_says_so() -> None:
    assert "the body is not valid JSON" in verdict(message_body=b'[["run", 0], {}, {').reason()


# -- judging under signing -----------------------------------------------------------------


def opens_to(inner: bytes) -> Any:
    return lambda _: inner


def refuses(why: str) -> Any:
    def open_signed(_: bytes) -> bytes:
        raise UnverifiedBody(why)

    return open_signed


def test_under_signing_a_json_message_is_called_unsigned_not_a_refused_type() -> None:
    judged = verdict(open_signed=opens_to(body(RUN_ID, 3)))

    assert not judged.trusted and judged.run_id is None
    assert judged.reason().startswith("not signed: content type 'application/json'")


def test_under_signing_a_body_that_does_not_verify_says_exactly_why() -> None:
    judged = verdict(
        content_type="application/data",
        open_signed=refuses("signed by a certificate the workers do not trust: 'stranger 42'"),
    )

    assert not judged.trusted and judged.run_id is None
    assert judged.reason() == "signed by a certificate the workers do not trust: 'stranger 42'"


def test_under_signing_a_verified_body_names_its_run_and_its_arguments_are_checked() -> None:
    genuine = verdict(content_type="application/data", open_signed=opens_to(body(RUN_ID, 3)))
    wrong = verdict(content_type="application/data", open_signed=opens_to(body(RUN_ID)))

    assert genuine.trusted and genuine.may_act and genuine.run_id == RUN_ID
    assert not wrong.trusted and "missing argument chunk_index" in wrong.reason()


# -- who may act, and on what --------------------------------------------------------------


@pytest.mark.parametrize("reason", ["rejected", "delivery_limit", "expired"])
def test_ours_dead_in_its_queue_for_a_reason_the_broker_gives_may_act(reason: str) -> None:
    assert verdict(headers(**{"x-death": [death(reason=reason)]})).may_act


@pytest.mark.parametrize(
    "x_death",
    [..., [death("etl.plan")], [death(reason="maxlen")], [death(time=...)]],
    ids=["published-into-the-dlq", "other-queue", "maxlen", "no-time"],
)
def test_ours_without_a_death_we_act_on_never_acts(x_death: Any) -> None:
    entries = x_death if x_death is ... else [{k: v for k, v in x_death[0].items() if v is not ...}]
    judged = verdict(headers(**{"x-death": entries}))

    assert judged.trusted and judged.run_id == RUN_ID  # listed with its run...
    assert not judged.may_act  # ...never acted on


def test_a_forged_letter_says_it_was_not_dead_lettered() -> None:
    judged = verdict(headers(**{"x-death": ...}))

    assert judged.reason().startswith("no death record (x-death): RabbitMQ did not dead-letter")


TRANSFORM, PLAN, COMMIT = "etl.transform_chunk", "etl.plan_run", "etl.commit_run"


@pytest.mark.parametrize(
    ("task", "run_state", "chunk_state", "undone"),
    [
        (TRANSFORM, RunState.RUNNING, ChunkState.RUNNING, True),
        (TRANSFORM, RunState.RUNNING, ChunkState.PENDING, False),
        (TRANSFORM, RunState.RUNNING, ChunkState.DONE, False),
        (TRANSFORM, RunState.FAILED, ChunkState.RUNNING, False),
        (PLAN, RunState.PLANNING, None, True),
        (PLAN, RunState.QUEUED, None, False),
        (PLAN, RunState.RUNNING, None, False),
        (COMMIT, RunState.COMMITTING, None, True),
        (COMMIT, RunState.RUNNING, None, False),
    ],
)
def test_a_rejected_message_left_undone_only_work_that_had_started(
    task: str, run_state: RunState, chunk_state: ChunkState | None, undone: bool
) -> None:
    queue = {TRANSFORM: "etl.transform", PLAN: "etl.plan", COMMIT: "etl.commit"}[task]
    args = [RUN_ID, 3] if task == TRANSFORM else [RUN_ID]
    judged = verdict(headers(task, **{"x-death": [death(queue)]}), body(*args), queue=queue)

    assert work_left_undone(judged, run_state, chunk_state) is undone


@pytest.mark.parametrize("reason", ["delivery_limit", "expired"])
def test_a_message_the_broker_parked_left_its_work_undone_while_the_run_is_active(
    reason: str,
) -> None:
    judged = verdict(headers(**{"x-death": [death(reason=reason)]}))

    assert work_left_undone(judged, RunState.RUNNING, ChunkState.PENDING)
    assert not work_left_undone(judged, RunState.SUCCEEDED, ChunkState.PENDING)
    assert not work_left_undone(judged, RunState.RUNNING, ChunkState.DONE)


def test_a_refused_message_never_leaves_work_undone() -> None:
    judged = verdict(headers(eta="tomorrow"))

    assert not work_left_undone(judged, RunState.RUNNING, ChunkState.RUNNING)


# -- reasons -------------------------------------------------------------------------------


def test_the_ledger_error_is_the_reason_for_one_of_ours_a_worker_rejected() -> None:
    assert verdict().reason("chunk 3 failed: ValueError: bad row") == (
        "chunk 3 failed: ValueError: bad row"
    )


def test_without_a_ledger_error_a_rejection_says_the_task_gave_up() -> None:
    assert verdict().reason().startswith("rejected by a worker after its task gave up")


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("delivery_limit", "delivered too many times (quorum queue delivery limit)"),
        ("expired", "expired before a worker took it"),
    ],
)
def test_the_brokers_own_reason_is_explained(reason: str, words: str) -> None:
    judged = verdict(headers(**{"x-death": [death(reason=reason)]}))

    assert judged.reason("chunk 3 failed: boom") == words
    refused = verdict(headers(retries="x", **{"x-death": [death(reason=reason)]}))
    assert refused.reason() == f"{words}: header 'retries' must be an integer, got str"


# -- what the ledger keeps -----------------------------------------------------------------


def test_a_body_is_kept_up_to_its_first_64_kib_with_its_size_and_sha256() -> None:
    kept, size, sha256 = body_excerpt(b"x" * 20_000_000)

    assert kept == b"x" * BODY_KEPT_BYTES and size == 20_000_000 and len(sha256) == 64
    assert body_excerpt(b"[]") == (b"[]", 2, body_excerpt(b"[]")[2])


def test_headers_are_kept_as_they_were_when_they_fit() -> None:
    given = {"task": "etl.plan_run", "n": [1, 2.5, None, True], "t": {"a": "b"}}

    assert storable_headers(given) == given
    assert HEADERS_CUT not in storable_headers({**given, "x-death": [death()]})


@pytest.mark.parametrize(
    "given",
    [
        {"id": "a\x00b"},
        {"a\x00": 1},
        {"n": float("nan")},
        {"deep": json.loads("[" * 40 + "]" * 40)},
        {"long": "x" * 100_000},
        {"many": list(range(1_000))},
        {f"k{i}": "v" * 3_000 for i in range(40)},
        {"lone": "\udc80"},
    ],
    ids=["nul", "nul-key", "nan", "deep", "long", "many", "big", "surrogate"],
)
def test_headers_postgres_could_not_store_are_cleaned_bounded_and_marked(
    given: dict[str, Any],
) -> None:
    kept = storable_headers({"x-hostile-case": "marker", **given})

    text = json.dumps(kept, allow_nan=False)
    text.encode("utf-8")  # no lone surrogate
    assert "\\u0000" not in text and len(text) <= HEADERS_KEPT_BYTES + 1_000
    assert kept[HEADERS_CUT] and kept["x-hostile-case"] == "marker"


def test_a_header_table_of_another_shape_is_kept_as_one_value() -> None:
    assert storable_headers(["not", "a", "table"])["(headers)"] == ["not", "a", "table"]


def test_printable_text_is_cut_and_has_no_control_characters() -> None:
    assert printable("a\x00b\x1b[31mc\nd", 100) == "a\ufffdb\ufffd[31mc\ufffdd"
    assert printable("x" * 500, 10) == "x" * 9 + "…"


def test_a_letter_kept_in_part_is_not_whole() -> None:
    letter = DeadLetter(
        id=1, fingerprint="f", queue="etl.plan", task=None, task_id=None, run_id=None,
        chunk_index=None, reason="r", death_reason=None, death_count=1,
        state=DeadLetterState.DEAD, first_seen_at=DIED_AT, last_seen_at=DIED_AT,
        replay_count=0, replayed_at=None, content_type=None, content_encoding=None,
        headers={}, body=b"x" * 10, body_size=10,
    )  # fmt: skip

    assert letter.kept_whole
    assert not DeadLetter(**{**letter.__dict__, "body_size": 11}).kept_whole
    assert not DeadLetter(**{**letter.__dict__, "headers": {HEADERS_CUT: "x"}}).kept_whole
