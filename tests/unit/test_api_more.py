"""The API beyond runs: pagination and filters, pipelines, readiness, a repeated request
after a refused publish, and read-only tokens."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from api import ApiServices, create_app
from etl.adapters.ledger import Ledger
from etl.config import Settings
from etl.domain.runs import RunState, Trigger
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService

from support import RecordingEnqueue

AUTH = {"Authorization": "Bearer t1"}
READ_ONLY = {"Authorization": "Bearer r1"}


def make_client(
    ledger: Ledger, enqueue: RecordingEnqueue, readiness: Any = dict, **settings: Any
) -> FlaskClient:
    settings.setdefault("api_token", SecretStr("t1"))
    settings.setdefault("api_read_token", SecretStr("r1"))
    run_service = RunService(ledger, enqueue)
    dead_letters = DeadLetterService(
        ledger, "amqp://guest:guest@127.0.0.1:1//", run_service.retry_run
    )
    services = ApiServices(ledger, run_service, dead_letters, readiness=readiness)
    return create_app(Settings(**settings), services=services).test_client()


@pytest.fixture
def client(ledger: Ledger, enqueue: RecordingEnqueue) -> FlaskClient:
    return make_client(ledger, enqueue)


def add_runs(ledger: Ledger, n: int, **kwargs: Any) -> list[str]:
    ids = []
    for day in range(n):
        run, _ = ledger.create_run(
            pipeline=kwargs.get("pipeline", "orders_daily"),
            logical_date=date(2026, 1, 1) + timedelta(days=day),
            trigger=kwargs.get("trigger", Trigger.MANUAL),
            params={},
        )
        ids.append(run.id)
    return ids


def test_runs_are_paged_with_a_cursor_newest_first_without_gaps_or_repeats(
    client: FlaskClient, ledger: Ledger
) -> None:
    ids = add_runs(ledger, 7)
    seen, cursor, pages = [], "", 0
    while True:
        response = client.get(f"/api/v1/runs?limit=3{cursor}", headers=AUTH)
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
    scheduled = add_runs(ledger, 2, trigger=Trigger.SCHEDULE)

    def listed(query: str) -> list[str]:
        response = client.get(f"/api/v1/runs?{query}", headers=AUTH)
        assert response.status_code == 200, response.get_json()
        return [run["id"] for run in response.get_json()["runs"]]

    assert listed("trigger=schedule") == list(reversed(scheduled))
    assert listed("trigger=manual&logical_date_from=2026-01-02&logical_date_to=2026-01-03") == [
        manual[2], manual[1]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=%ZZ", "cursor"),
        ("trigger=cron", "trigger"),
        ("logical_date_from=2026-02-30", "logical_date_from"),
        ("logical_date_to=yesterday", "logical_date_to"),
        ("limit=1e3", "limit"),
        ("sort=asc", "sort"),
    ],
)
def test_bad_list_queries_name_the_field(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/api/v1/runs?{query}", headers=AUTH)
    assert response.status_code == 400, response.get_json()
    assert field in [d["field"] for d in response.get_json()["details"]]


def test_pipelines_show_their_schedule_next_run_and_last_runs(
    client: FlaskClient, ledger: Ledger
) -> None:
    [run_id] = add_runs(ledger, 1)

    response = client.get("/api/v1/pipelines", headers=AUTH)

    assert response.status_code == 200
    [orders] = [p for p in response.get_json()["pipelines"] if p["name"] == "orders_daily"]
    assert orders["schedule"] == {"kind": "cron", "expression": "0 2 * * *", "timezone": "UTC"}
    assert orders["next_run_at"].endswith("T02:00:00Z") or "T02:00:00" in orders["next_run_at"]
    assert orders["last_run"]["id"] == run_id and orders["last_success"] is None
    one = client.get("/api/v1/pipelines/orders_daily", headers=AUTH)
    assert one.get_json()["name"] == "orders_daily"
    assert client.get("/api/v1/pipelines/nope", headers=AUTH).status_code == 404
    assert client.get("/api/v1/pipelines").status_code == 401


def test_readyz_is_public_and_names_each_dependency_without_details(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    problems = {
        "broker": "OperationalError: [Errno 111] connect to amqp://etl:s3cret@mq:5672 refused",
        "database": None,
        "bucket": None,
    }
    client = make_client(ledger, enqueue, readiness=lambda: problems)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.get_json() == {
        "status": "not ready",
        "checks": {
            "broker": "unavailable (OperationalError)",
            "database": "ok",
            "bucket": "ok",
        },
    }
    assert b"s3cret" not in response.data and b"mq:5672" not in response.data
    problems["broker"] = None
    assert client.get("/readyz").status_code == 200


def test_repeating_a_request_whose_publish_was_refused_sends_it_now(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    body = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}
    key = {"Idempotency-Key": "abc-1"}
    enqueue.error = ConnectionRefusedError("broker down")
    refused = client.post("/api/v1/runs", json=body, headers=AUTH | key)
    assert refused.status_code == 503

    enqueue.error = None
    again = client.post("/api/v1/runs", json=body, headers=AUTH | key)

    assert again.status_code == 202
    [run] = ledger.list_runs()
    assert again.get_json()["id"] == run.id and run.state is RunState.QUEUED
    assert enqueue.calls == [("etl.plan_run", [run.id])]
    # once sent, a further repeat is the same run and sends nothing
    assert client.post("/api/v1/runs", json=body, headers=AUTH | key).status_code == 200
    assert len(enqueue.calls) == 1


def test_a_read_only_token_reads_but_may_not_change_anything(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    assert client.get("/api/v1/runs", headers=READ_ONLY).status_code == 200
    assert client.get("/api/v1/pipelines", headers=READ_ONLY).status_code == 200
    body = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}
    refused = client.post("/api/v1/runs", json=body, headers=READ_ONLY)
    assert refused.status_code == 403
    assert "read-only" in refused.get_json()["error"]
    assert ledger.list_runs() == [] and enqueue.calls == []
    assert client.post("/api/v1/runs", json=body, headers=AUTH).status_code == 202


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
    response = getattr(client, method)(url, json=body, headers=AUTH)
    assert response.status_code == 400
    assert [d["field"] for d in response.get_json()["details"]] == [field]
    assert ledger.list_runs() == []
