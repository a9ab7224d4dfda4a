"""The HTTP API's runs: starting one (validated, recorded, enqueued once, idempotent),
reading and listing them, cancelling and retrying."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from etl.adapters.ledger import Ledger
from etl.domain.runs import RunState, Trigger

from builders import (
    GOOD_BODY,
    api_app,
    auth,
    failed_planned_run,
    field_names,
    new_run,
    run_in_state,
)
from fakes import RecordingEnqueue

# -- POST /api/v1/runs ---------------------------------------------------------------------


def post_run(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post("/api/v1/runs", json=body, headers=auth(**headers))


def test_a_new_run_is_accepted_recorded_and_enqueued_once(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    response = post_run(client, GOOD_BODY)

    assert response.status_code == 202
    body = response.get_json()
    assert body["state"] == "queued"
    assert body["pipeline"] == "orders_daily"
    assert body["logical_date"] == "2026-11-01"
    assert response.headers["Location"] == f"/api/v1/runs/{body['id']}"
    assert enqueue.calls == [("etl.plan_run", [body["id"]])]
    run = ledger.get_run(body["id"])
    assert (run.state, run.trigger) == (RunState.QUEUED, Trigger.MANUAL)


def test_the_created_run_can_be_read_back_with_its_chunk_progress(client: FlaskClient) -> None:
    created = post_run(client, {**GOOD_BODY, "params": {"chunk_size": 1000}}).get_json()
    response = client.get(f"/api/v1/runs/{created['id']}", headers=auth("t2"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == created["id"]
    assert body["params"] == {"chunk_size": 1000}
    assert body["chunks"] == {"total": None, "pending": 0, "running": 0, "done": 0, "failed": 0}


def test_a_repeated_request_with_the_same_idempotency_key_returns_the_same_run(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    first = post_run(client, GOOD_BODY, **{"Idempotency-Key": "abc-123"})
    again = post_run(client, GOOD_BODY, **{"Idempotency-Key": "abc-123"})

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(enqueue.calls) == 1
    assert len(ledger.list_runs()) == 1


def test_the_same_idempotency_key_for_another_request_conflicts(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    post_run(client, GOOD_BODY, **{"Idempotency-Key": "abc-123"})
    response = post_run(
        client, {**GOOD_BODY, "logical_date": "2026-11-02"}, **{"Idempotency-Key": "abc-123"}
    )
    assert response.status_code == 409
    assert "abc-123" in response.get_json()["error"]
    assert len(enqueue.calls) == 1
    assert len(ledger.list_runs()) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pipeline": "no_such_pipeline", "logical_date": "2026-11-01"}, "pipeline"),
        ({"logical_date": "2026-11-01"}, "pipeline"),
        ({"pipeline": 42, "logical_date": "2026-11-01"}, "pipeline"),
        ({"pipeline": "orders_daily", "logical_date": "2026-02-30"}, "logical_date"),
        ({"pipeline": "orders_daily", "logical_date": "01/11/2026"}, "logical_date"),
        ({**GOOD_BODY, "colour": "blue"}, "colour"),
        ({**GOOD_BODY, "params": {"shard": 3}}, "params.shard"),
        ({**GOOD_BODY, "params": {"chunk_size": "many"}}, "params.chunk_size"),
        ({**GOOD_BODY, "params": {"chunk_size": 0}}, "params.chunk_size"),
        ({**GOOD_BODY, "params": [1, 2]}, "params"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_enqueued_or_recorded(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue, body: Any, field: str
) -> None:
    response = post_run(client, body)

    assert response.status_code == 400
    assert field in field_names(response)
    assert enqueue.calls == []
    assert ledger.list_runs() == []


@pytest.mark.parametrize(
    "logical_date",
    [0, "1700006400", "2026-11-01T00:00:00"],
    ids=["epoch-number", "epoch-text", "datetime"],
)
def test_a_logical_date_that_is_not_yyyy_mm_dd_is_a_400(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue, logical_date: Any
) -> None:
    response = post_run(client, {"pipeline": "orders_daily", "logical_date": logical_date})

    assert response.status_code == 400, response.get_json()
    assert "logical_date" in field_names(response)
    assert enqueue.calls == []
    assert ledger.list_runs() == []


def test_a_boolean_chunk_size_is_a_400(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    # true would otherwise be read as chunk_size=1: one task per source row.
    response = post_run(client, {**GOOD_BODY, "params": {"chunk_size": True}})

    assert response.status_code == 400, response.get_json()
    assert "params.chunk_size" in field_names(response)
    assert enqueue.calls == []


@pytest.mark.parametrize(
    "data",
    [b"[1, 2, 3]", b'"orders_daily"', b"null", b'{"pipeline": ', b""],
    ids=["list", "string", "null", "malformed", "empty"],
)
def test_a_body_that_is_not_a_json_object_is_a_400(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue, data: bytes
) -> None:
    response = client.post(
        "/api/v1/runs", data=data, headers=auth(**{"Content-Type": "application/json"})
    )
    assert response.status_code == 400
    assert field_names(response) == ["body"]
    assert enqueue.calls == []
    assert ledger.list_runs() == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_json_is_a_415(
    client: FlaskClient, enqueue: RecordingEnqueue, content_type: str
) -> None:
    response = client.post(
        "/api/v1/runs",
        data=json.dumps(GOOD_BODY),
        headers=auth(**{"Content-Type": content_type}),
    )
    assert response.status_code == 415
    assert response.is_json
    assert enqueue.calls == []


def test_a_body_over_the_limit_is_a_413(ledger: Ledger, enqueue: RecordingEnqueue) -> None:
    client = api_app(ledger, enqueue, api_max_body_bytes=2048).test_client()
    body = {**GOOD_BODY, "params": {"padding": "x" * 10_240}}

    response = post_run(client, body)

    assert response.status_code == 413
    assert response.is_json
    assert enqueue.calls == []
    assert ledger.list_runs() == []


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_idempotency_key_of_bad_length_is_a_400(
    client: FlaskClient, enqueue: RecordingEnqueue, key: str
) -> None:
    response = post_run(client, GOOD_BODY, **{"Idempotency-Key": key})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.get_json()["error"]
    assert enqueue.calls == []


def test_a_broker_that_refuses_the_task_is_a_503_and_the_run_is_failed_with_the_reason(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    enqueue.error = ConnectionRefusedError("broker down")

    response = post_run(client, GOOD_BODY)

    assert response.status_code == 503
    assert response.is_json
    [run] = ledger.list_runs()
    assert run.state is RunState.FAILED
    assert run.reason is not None and "broker down" in run.reason
    assert run.id in response.get_json()["error"]


def test_repeating_a_request_whose_publish_was_refused_sends_it_now(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    body = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}
    key = {"Idempotency-Key": "abc-1"}
    enqueue.error = ConnectionRefusedError("broker down")
    refused = client.post("/api/v1/runs", json=body, headers=auth(**key))
    assert refused.status_code == 503

    enqueue.error = None
    again = client.post("/api/v1/runs", json=body, headers=auth(**key))

    assert again.status_code == 202
    [run] = ledger.list_runs()
    assert again.get_json()["id"] == run.id and run.state is RunState.QUEUED
    assert enqueue.calls == [("etl.plan_run", [run.id])]
    # once sent, a further repeat is the same run and sends nothing
    assert client.post("/api/v1/runs", json=body, headers=auth(**key)).status_code == 200
    assert len(enqueue.calls) == 1


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("get", "/api/v1/runs?pipeline=a%00b", None, "pipeline"),
        ("get", "/api/v1/runs/abc%00", None, "path"),
        ("post", "/api/v1/runs", {"pipeline": "orders_daily", "params": {"x": "a\x00"}}, "body"),
    ],
)
def test_a_nul_character_anywhere_is_a_400_not_a_database_error(
    client: FlaskClient, ledger: Ledger, method: str, url: str, body: Any, field: str
) -> None:
    response = getattr(client, method)(url, json=body, headers=auth())
    assert response.status_code == 400
    assert field_names(response) == [field]
    assert ledger.list_runs() == []


# -- GET /api/v1/runs ----------------------------------------------------------------------


def test_an_unknown_run_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/runs/no-such-run", headers=auth())
    assert response.status_code == 404
    assert "no-such-run" in response.get_json()["error"]


def test_runs_are_listed_newest_first_and_filtered_by_pipeline_and_state(
    client: FlaskClient, ledger: Ledger
) -> None:
    day = post_run(client, GOOD_BODY).get_json()["id"]
    other = new_run(ledger, pipeline="other_pipeline")
    planning = post_run(client, {**GOOD_BODY, "logical_date": "2026-11-02"}).get_json()["id"]
    ledger.move_run(planning, RunState.PLANNING)

    def listed(query: str) -> list[str]:
        response = client.get("/api/v1/runs" + query, headers=auth())
        assert response.status_code == 200
        return [run["id"] for run in response.get_json()["runs"]]

    assert listed("") == [planning, other, day]
    assert listed("?pipeline=orders_daily") == [planning, day]
    assert listed("?state=planning") == [planning]
    assert listed("?state=queued&pipeline=other_pipeline") == [other]
    assert listed("?limit=1") == [planning]
    assert listed("?pipeline=nothing") == []


def add_runs(ledger: Ledger, count: int, trigger: Trigger = Trigger.MANUAL) -> list[str]:
    """``count`` runs of orders_daily, a day apart from 2026-01-01; their ids, oldest first."""
    first = date(2026, 1, 1)
    return [new_run(ledger, day=first + timedelta(days=n), trigger=trigger) for n in range(count)]


def test_runs_are_paged_with_a_cursor_newest_first_without_gaps_or_repeats(
    client: FlaskClient, ledger: Ledger
) -> None:
    ids = add_runs(ledger, 7)
    seen, cursor, pages = [], "", 0
    while True:
        response = client.get(f"/api/v1/runs?limit=3{cursor}", headers=auth())
        assert response.status_code == 200
        body = response.get_json()
        seen += [run["id"] for run in body["runs"]]
        pages += 1
        if body["next_cursor"] is None:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == list(reversed(ids)) and pages == 3


def test_runs_are_filtered_by_trigger_and_logical_date_range(
    client: FlaskClient, ledger: Ledger
) -> None:
    manual = add_runs(ledger, 5)
    scheduled = add_runs(ledger, 2, Trigger.SCHEDULE)

    def listed(query: str) -> list[str]:
        response = client.get(f"/api/v1/runs?{query}", headers=auth())
        assert response.status_code == 200, response.get_json()
        return [run["id"] for run in response.get_json()["runs"]]

    assert listed("trigger=schedule") == list(reversed(scheduled))
    assert listed("trigger=manual&logical_date_from=2026-01-02&logical_date_to=2026-01-03") == [
        manual[2], manual[1]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=501", "limit"),
        ("limit=", "limit"),
        ("state=exploded", "state"),
        ("colour=blue", "colour"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=%ZZ", "cursor"),
        ("trigger=cron", "trigger"),
        ("logical_date_from=2026-02-30", "logical_date_from"),
        ("logical_date_to=yesterday", "logical_date_to"),
        ("limit=1e3", "limit"),
        ("sort=asc", "sort"),
    ],
)
def test_bad_list_queries_are_a_400_naming_the_field(
    client: FlaskClient, query: str, field: str
) -> None:
    response = client.get(f"/api/v1/runs?{query}", headers=auth())
    assert response.status_code == 400
    assert field_names(response) == [field]


def test_a_limit_of_non_ascii_digits_is_a_400_not_a_500(client: FlaskClient) -> None:
    # "\u00b2" (superscript two) passes str.isdigit() but int() refuses it.
    response = client.get("/api/v1/runs?limit=\u00b2", headers=auth())
    assert response.status_code == 400
    assert field_names(response) == ["limit"]


# -- POST /api/v1/runs/<id>/cancel and /retry ----------------------------------------------


def test_cancelling_a_running_run_is_a_200_with_the_cancelled_run(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = run_in_state(ledger, RunState.RUNNING)

    response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=auth())

    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["state"]) == (run_id, "cancelled")
    assert body["reason"] == "cancelled by request"
    assert ledger.get_run(run_id).state is RunState.CANCELLED
    assert enqueue.calls == []


def test_cancelling_a_succeeded_run_is_a_409_and_changes_nothing(
    client: FlaskClient, ledger: Ledger
) -> None:
    run_id = run_in_state(ledger, RunState.SUCCEEDED)

    response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=auth())

    assert response.status_code == 409
    assert response.is_json
    assert "succeeded" in response.get_json()["error"]
    assert ledger.get_run(run_id).state is RunState.SUCCEEDED


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_cancelling_or_retrying_an_unknown_run_is_a_json_404(
    client: FlaskClient, enqueue: RecordingEnqueue, action: str
) -> None:
    response = client.post(f"/api/v1/runs/no-such-run/{action}", headers=auth())

    assert response.status_code == 404
    assert "no-such-run" in response.get_json()["error"]
    assert enqueue.calls == []


def test_retrying_a_failed_planned_run_is_a_202_and_enqueues_its_plan(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)

    response = client.post(f"/api/v1/runs/{run_id}/retry", headers=auth())

    assert response.status_code == 202
    body = response.get_json()
    assert (body["id"], body["state"], body["reason"]) == (run_id, "queued", None)
    assert enqueue.calls == [("etl.plan_run", [run_id])]
    assert ledger.get_run(run_id).state is RunState.QUEUED


def test_retrying_a_running_run_is_a_409_and_nothing_is_enqueued(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = run_in_state(ledger, RunState.RUNNING)

    response = client.post(f"/api/v1/runs/{run_id}/retry", headers=auth())

    assert response.status_code == 409
    assert "running" in response.get_json()["error"]
    assert enqueue.calls == []
    assert ledger.get_run(run_id).state is RunState.RUNNING


def test_a_retry_the_broker_refuses_is_a_503_and_the_run_is_failed_again(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)
    enqueue.error = ConnectionRefusedError("broker down")

    response = client.post(f"/api/v1/runs/{run_id}/retry", headers=auth())

    assert response.status_code == 503
    assert run_id in response.get_json()["error"]
    run = ledger.get_run(run_id)
    assert run.state is RunState.FAILED
    assert run.reason is not None and "broker down" in run.reason
