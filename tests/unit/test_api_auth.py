"""Who may use the HTTP API: every route but the health probes wants a bearer token; either
of the rotated tokens serves, a read-only token reads and changes nothing, and the app
refuses to start without one."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from etl.adapters.ledger import Ledger
from etl.config import SettingsError

from builders import GOOD_BODY, api_app, auth, failed_planned_run, new_run
from fakes import RecordingEnqueue


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
        api_app(ledger, enqueue, api_token=SecretStr(token))


def test_a_read_only_token_reads_but_may_not_change_anything(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    assert client.get("/api/v1/runs", headers=auth("r1")).status_code == 200
    assert client.get("/api/v1/pipelines", headers=auth("r1")).status_code == 200
    body = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}
    refused = client.post("/api/v1/runs", json=body, headers=auth("r1"))
    assert refused.status_code == 403
    assert "read-only" in refused.get_json()["error"]
    assert ledger.list_runs() == [] and enqueue.calls == []
    assert client.post("/api/v1/runs", json=body, headers=auth()).status_code == 202


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_cancelling_or_retrying_without_a_token_is_a_401_and_changes_nothing(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue, action: str
) -> None:
    run_id = failed_planned_run(ledger) if action == "retry" else new_run(ledger)
    before = ledger.get_run(run_id)

    response = client.post(f"/api/v1/runs/{run_id}/{action}")

    assert response.status_code == 401
    assert "token" in response.get_json()["error"]
    assert ledger.get_run(run_id) == before
    assert enqueue.calls == []


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


def test_readyz_is_public_and_names_each_dependency_without_details(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    problems = {
        "broker": "OperationalError: [Errno 111] connect to amqp://etl:s3cret@mq:5672 refused",
        "database": None,
        "bucket": None,
    }
    client = api_app(ledger, enqueue, readiness=lambda: problems).test_client()

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
