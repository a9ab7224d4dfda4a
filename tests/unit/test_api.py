from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import ApiServices, create_app
from etl.adapters.ledger import Ledger
from etl.config import Settings, SettingsError
from etl.domain.chunks import plan_chunks
from etl.domain.runs import RunState, Trigger
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService

from support import RecordingEnqueue

GOOD_BODY = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}
DAY = date(2026, 11, 1)


def make_app(ledger: Ledger, enqueue: RecordingEnqueue, **settings: Any) -> Flask:
    settings.setdefault("api_token", SecretStr("t1,t2"))
    run_service = RunService(ledger, enqueue)
    # No broker in unit tests: the dead-letter routes are covered by the integration suite.
    dead_letters = DeadLetterService(
        ledger, "amqp://guest:guest@127.0.0.1:1//", run_service.retry_run
    )
    return create_app(
        Settings(**settings),
        services=ApiServices(ledger=ledger, run_service=run_service, dead_letters=dead_letters),
    )


@pytest.fixture
def client(ledger: Ledger, enqueue: RecordingEnqueue) -> FlaskClient:
    return make_app(ledger, enqueue).test_client()


def auth(token: str = "t1", **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def post_run(client: FlaskClient, body: Any, **headers: str) -> Any:
    return client.post("/api/v1/runs", json=body, headers=auth(**headers))


def field_names(response: Any) -> list[str]:
    return [detail["field"] for detail in response.get_json()["details"]]


# -- authentication ------------------------------------------------------------------------


def test_healthz_needs_no_token(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


ROUTES = [
    ("POST", "/api/v1/runs"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/some-id"),
    ("GET", "/api/v1/no-such-route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer t1,t2"},
        {"Authorization": "Basic t1"},
        {"Authorization": "t1"},
    ],
    ids=["none", "empty", "wrong", "whole-list", "basic", "no-scheme"],
)
def test_every_api_route_refuses_a_missing_or_wrong_token_with_json_401(
    client: FlaskClient, enqueue: RecordingEnqueue, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.open(path, method=method, json=GOOD_BODY, headers=headers)
    assert response.status_code == 401
    assert response.is_json
    assert "token" in response.get_json()["error"]
    assert enqueue.calls == []


@pytest.mark.parametrize("token", ["t1", "t2"])
def test_either_rotated_token_is_accepted(client: FlaskClient, token: str) -> None:
    response = client.get("/api/v1/runs", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


@pytest.mark.parametrize("token", ["", " , "])
def test_the_app_refuses_to_start_without_a_token(
    ledger: Ledger, enqueue: RecordingEnqueue, token: str
) -> None:
    with pytest.raises(SettingsError, match="ETL_API_TOKEN"):
        make_app(ledger, enqueue, api_token=SecretStr(token))


# -- POST /api/v1/runs ---------------------------------------------------------------------


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
    client = make_app(ledger, enqueue, api_max_body_bytes=2048).test_client()
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


# -- GET /api/v1/runs ----------------------------------------------------------------------


def test_an_unknown_run_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/api/v1/runs/no-such-run", headers=auth())
    assert response.status_code == 404
    assert "no-such-run" in response.get_json()["error"]


def test_runs_are_listed_newest_first_and_filtered_by_pipeline_and_state(
    client: FlaskClient, ledger: Ledger
) -> None:
    day = post_run(client, GOOD_BODY).get_json()["id"]
    other, _ = ledger.create_run(
        pipeline="other_pipeline", logical_date=DAY, trigger=Trigger.MANUAL, params={}
    )
    planning = post_run(client, {**GOOD_BODY, "logical_date": "2026-11-02"}).get_json()["id"]
    ledger.move_run(planning, RunState.PLANNING)

    def listed(query: str) -> list[str]:
        response = client.get("/api/v1/runs" + query, headers=auth())
        assert response.status_code == 200
        return [run["id"] for run in response.get_json()["runs"]]

    assert listed("") == [planning, other.id, day]
    assert listed("?pipeline=orders_daily") == [planning, day]
    assert listed("?state=planning") == [planning]
    assert listed("?state=queued&pipeline=other_pipeline") == [other.id]
    assert listed("?limit=1") == [planning]
    assert listed("?pipeline=nothing") == []


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


def failed_planned_run(ledger: Ledger) -> str:
    run, _ = ledger.create_run(
        pipeline="orders_daily", logical_date=DAY, trigger=Trigger.MANUAL, params={}
    )
    ledger.move_run(run.id, RunState.PLANNING)
    ledger.record_plan(run.id, plan_chunks(1, 200, 100), {"key_min": 1})
    ledger.move_run(run.id, RunState.RUNNING)
    ledger.fail_chunk(run.id, 1, "ValueError: bad row")
    assert ledger.fail_run(run.id, "chunk 1 failed: ValueError: bad row")
    return run.id


def run_moved_to(ledger: Ledger, *states: RunState) -> str:
    run, _ = ledger.create_run(
        pipeline="orders_daily", logical_date=DAY, trigger=Trigger.MANUAL, params={}
    )
    for state in states:
        assert ledger.move_run(run.id, state)
    return run.id


SUCCEEDED_PATH = (RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING, RunState.SUCCEEDED)


def test_cancelling_a_running_run_is_a_200_with_the_cancelled_run(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = run_moved_to(ledger, RunState.PLANNING, RunState.RUNNING)

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
    run_id = run_moved_to(ledger, *SUCCEEDED_PATH)

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


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_cancelling_or_retrying_without_a_token_is_a_401_and_changes_nothing(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue, action: str
) -> None:
    run_id = failed_planned_run(ledger) if action == "retry" else run_moved_to(ledger)
    before = ledger.get_run(run_id)

    response = client.post(f"/api/v1/runs/{run_id}/{action}")

    assert response.status_code == 401
    assert "token" in response.get_json()["error"]
    assert ledger.get_run(run_id) == before
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
    run_id = run_moved_to(ledger, RunState.PLANNING, RunState.RUNNING)

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


# -- GET /api/v1/dead-letters (validation only: listing syncs from the broker) -------------


def test_listing_dead_letters_without_a_token_is_a_401(client: FlaskClient) -> None:
    response = client.get("/api/v1/dead-letters")
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]


def test_replaying_a_dead_letter_without_a_token_is_a_401(client: FlaskClient) -> None:
    response = client.post("/api/v1/dead-letters/1/replay")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("query", "fields"),
    [("colour=blue", ["colour"]), ("state=dead&limit=5", ["limit", "state"]), ("all=yes", ["all"])],
)
def test_bad_dead_letter_queries_are_a_400_naming_the_field(
    client: FlaskClient, query: str, fields: list[str]
) -> None:
    response = client.get(f"/api/v1/dead-letters?{query}", headers=auth())
    assert response.status_code == 400
    assert sorted(field_names(response)) == fields


# Reachable without a token, on purpose: the process and readiness probes.
PUBLIC_ENDPOINTS = {"health.healthz", "health.readyz", "static"}


def every_route(app: Any) -> list[tuple[str, str]]:
    """Each method and path the app serves (path parameters filled in): the API, the
    metrics and the dashboard (whose 401 asks a browser for the token)."""
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"some-\1", rule.rule)
        routes += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return routes


def test_every_route_the_app_serves_refuses_a_request_without_a_token(
    client: FlaskClient, enqueue: RecordingEnqueue
) -> None:
    routes = every_route(client.application)
    assert ("POST", "/api/v1/runs") in routes and len(routes) > 10
    for method, path in routes:
        response = client.open(path, method=method, json=GOOD_BODY)
        assert response.status_code == 401, (method, path, response.status_code)
    assert enqueue.calls == []
