"""The HTTP API's pipelines: each with its schedule, next run and last runs."""

from __future__ import annotations

from flask.testing import FlaskClient

from etl.adapters.ledger import Ledger

from builders import auth, new_run


def test_pipelines_show_their_schedule_next_run_and_last_runs(
    client: FlaskClient, ledger: Ledger
) -> None:
    run_id = new_run(ledger)

    response = client.get("/api/v1/pipelines", headers=auth())

    assert response.status_code == 200
    [orders] = [p for p in response.get_json()["pipelines"] if p["name"] == "orders_daily"]
    assert orders["schedule"] == {"kind": "cron", "expression": "0 2 * * *", "timezone": "UTC"}
    assert orders["next_run_at"].endswith("T02:00:00Z") or "T02:00:00" in orders["next_run_at"]
    assert orders["last_run"]["id"] == run_id and orders["last_success"] is None
    one = client.get("/api/v1/pipelines/orders_daily", headers=auth())
    assert one.get_json()["name"] == "orders_daily"
    assert client.get("/api/v1/pipelines/nope", headers=auth()).status_code == 404
    assert client.get("/api/v1/pipelines").status_code == 401
