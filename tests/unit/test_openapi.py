"""The OpenAPI document: generated from the models, and the same set of routes as the app."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from pydantic import SecretStr

from api import ApiServices, create_app
from api.openapi import OPERATIONS, openapi_document
from etl.adapters.ledger import Ledger
from etl.config import Settings
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService

from fakes import RecordingEnqueue


def app_routes(ledger: Ledger) -> set[tuple[str, str]]:
    run_service = RunService(ledger, RecordingEnqueue())
    dead = DeadLetterService(ledger, "amqp://guest:guest@127.0.0.1:1//", run_service)
    app = create_app(Settings(api_token=SecretStr("t")), ApiServices(ledger, run_service, dead))
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("dashboard."):
            continue  # the dashboard is HTML for people, not part of the API
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
    ledger: Ledger,
) -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert app_routes(ledger) == documented


def test_the_document_is_openapi_3_1_with_every_model_resolvable() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(document).replace("'", '"')))
    assert refs and refs <= set(schemas)
    create = document["paths"]["/api/v1/runs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateRunRequest"
    }
    assert {p["name"] for p in document["paths"]["/api/v1/runs"]["get"]["parameters"]} >= {
        "pipeline", "state", "trigger", "limit", "cursor"
    }  # fmt: skip
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/api/v1/runs"]["get"]["security"] == [{"bearer": []}]
    # the request model forbids extra fields, and the document says so
    assert schemas["CreateRunRequest"]["additionalProperties"] is False


def test_the_document_is_served_to_a_token_holder(ledger: Ledger) -> None:
    run_service = RunService(ledger, RecordingEnqueue())
    dead = DeadLetterService(ledger, "amqp://guest:guest@127.0.0.1:1//", run_service)
    app = create_app(Settings(api_token=SecretStr("t")), ApiServices(ledger, run_service, dead))
    client: FlaskClient = app.test_client()
    assert client.get("/api/v1/openapi.json").status_code == 401
    served = client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer t"})
    assert served.status_code == 200 and served.get_json() == openapi_document()
