"""The dashboard's pages render from the ledger, and ask browsers for a token."""

from __future__ import annotations

import base64
from datetime import date

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.domain.runs import Trigger
from etl.service import execution as steps

from builders import api_app, utc_day
from fakes import RecordingEnqueue


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


@pytest.fixture
def client(services: Services) -> FlaskClient:
    app = api_app(
        services.ledger,
        RecordingEnqueue(),
        api_token=SecretStr("full"),
        api_read_token=SecretStr("reader"),
        s3_bucket="unit-bucket",
    )
    return app.test_client()


def committed_run(services: Services) -> str:
    seed_orders(services.source_engine, 1_000)
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 3, 1)),
        logical_date=date(2026, 3, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 250},
    )
    for chunk in steps.plan_run(services, run.id) or []:
        steps.transform_chunk(services, run.id, chunk.index)
    steps.commit_run(services, run.id)
    return run.id


def test_a_browser_is_asked_for_a_token_and_a_read_only_one_will_do(
    client: FlaskClient,
) -> None:
    refused = client.get("/dashboard/")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert client.get("/dashboard/", headers=basic("wrong")).status_code == 401
    assert client.get("/dashboard/", headers=basic("reader")).status_code == 200
    assert client.get("/dashboard/", headers={"Authorization": "Bearer full"}).status_code == 200
    # Basic is for the dashboard only: the API still wants a bearer token
    assert client.get("/api/v1/runs", headers=basic("reader")).status_code == 401


def test_the_pages_show_the_runs_chunks_pipelines_and_dead_letters(
    client: FlaskClient, services: Services
) -> None:
    run_id = committed_run(services)
    auth = basic("reader")

    listing = client.get("/dashboard/", headers=auth).get_data(as_text=True)
    assert run_id[:8] in listing and "succeeded" in listing and "orders_daily" in listing

    page = client.get(f"/dashboard/runs/{run_id}", headers=auth).get_data(as_text=True)
    assert page.count('class="timeline"') == 4  # one bar per chunk
    assert f"s3://unit-bucket/etl/orders_daily/dt=2026-03-01/run={run_id}/_manifest.json" in page
    assert "4 of 4 done" in page

    pipelines = client.get("/dashboard/pipelines", headers=auth).get_data(as_text=True)
    assert "orders_daily" in pipelines and "02:00" in pipelines
    letters = client.get("/dashboard/dead-letters", headers=auth).get_data(as_text=True)
    assert "No dead letters" in letters
    assert client.get("/dashboard/runs/nope", headers=auth).status_code == 404
