"""The OpenAPI document, generated from the route table below and the pydantic models
the views themselves validate and answer with (``/api/v1/openapi.json``).

Every route of the app must be in ``OPERATIONS`` and every operation must be a route:
``tests/unit/test_openapi.py`` fails on any drift, and the suite fuzzes the live app
against this document (no 5xx, every response matching its schema).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.models import (
    BackfillResponse,
    CreateBackfillRequest,
    CreateBackfillResponse,
    CreateRunRequest,
    DeadLetterListResponse,
    DeadLetterQuery,
    ErrorResponse,
    HealthResponse,
    PipelineListResponse,
    PipelineResponse,
    ReadinessResponse,
    ReplayResponse,
    RunListQuery,
    RunListResponse,
    RunResponse,
)

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

API_VERSION = "1.0.0"
_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    """One method on one path, with the models of its body, query and answers."""

    method: str
    path: str  # OpenAPI form: /api/v1/runs/{run_id}
    summary: str
    responses: dict[int, type[BaseModel]]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path_params: dict[str, str] = field(default_factory=dict)  # name -> JSON type
    public: bool = False
    idempotency_key: bool = False
    # Answers text/plain (Prometheus's format) rather than a JSON model.
    plain_text: bool = False


def _errors(*codes: int) -> dict[int, type[BaseModel]]:
    # Every operation but the public ones can answer 401; these add their own.
    return dict.fromkeys(codes, ErrorResponse)


OPERATIONS = [
    Operation("get", "/healthz", "The process is up", {200: HealthResponse}, public=True),
    Operation(
        "get",
        "/readyz",
        "The broker, the ledger database and the bucket answer",
        {200: ReadinessResponse, 503: ReadinessResponse},
        public=True,
    ),
    Operation(
        "post",
        "/api/v1/runs",
        "Start a run",
        {200: RunResponse, 202: RunResponse} | _errors(400, 403, 409, 413, 415, 503),
        body=CreateRunRequest,
        idempotency_key=True,
    ),
    Operation(
        "get",
        "/api/v1/runs",
        "List runs, newest first, a page at a time",
        {200: RunListResponse} | _errors(400),
        query=RunListQuery,
    ),
    Operation(
        "get",
        "/api/v1/runs/{run_id}",
        "One run with its chunk progress",
        {200: RunResponse} | _errors(404),
        path_params={"run_id": "string"},
    ),
    Operation(
        "post",
        "/api/v1/runs/{run_id}/cancel",
        "Cancel a run",
        {200: RunResponse} | _errors(403, 404, 409),
        path_params={"run_id": "string"},
    ),
    Operation(
        "post",
        "/api/v1/runs/{run_id}/retry",
        "Retry a failed run's unfinished chunks, then commit",
        {202: RunResponse} | _errors(403, 404, 409, 503),
        path_params={"run_id": "string"},
    ),
    Operation(
        "get",
        "/api/v1/pipelines",
        "The pipelines, their schedules, next and last runs",
        {200: PipelineListResponse},
    ),
    Operation(
        "get",
        "/api/v1/pipelines/{name}",
        "One pipeline",
        {200: PipelineResponse} | _errors(404),
        path_params={"name": "string"},
    ),
    Operation(
        "post",
        "/api/v1/backfills",
        "Start one run per logical date over a range",
        {200: CreateBackfillResponse, 202: CreateBackfillResponse}
        | _errors(400, 403, 409, 413, 415, 503),
        body=CreateBackfillRequest,
    ),
    Operation(
        "get",
        "/api/v1/backfills/{backfill_id}",
        "A backfill's progress and runs",
        {200: BackfillResponse} | _errors(404),
        path_params={"backfill_id": "string"},
    ),
    Operation(
        "post",
        "/api/v1/backfills/{backfill_id}/cancel",
        "Cancel a backfill's unfinished runs",
        {200: BackfillResponse} | _errors(403, 404),
        path_params={"backfill_id": "string"},
    ),
    Operation(
        "get",
        "/api/v1/dead-letters",
        "Messages parked in the dead-letter queues",
        {200: DeadLetterListResponse} | _errors(400, 503),
        query=DeadLetterQuery,
    ),
    Operation(
        "post",
        "/api/v1/dead-letters/{dead_letter_id}/replay",
        "Send a parked message's work again, once",
        {200: ReplayResponse} | _errors(403, 404, 503),
        path_params={"dead_letter_id": "integer"},
    ),
    Operation(
        "get",
        "/metrics",
        "Prometheus metrics from the ledger and the broker",
        {200: ErrorResponse},  # text/plain, replaced below
        plain_text=True,
    ),
    Operation(
        "get",
        "/api/v1/openapi.json",
        "This document",
        {200: ErrorResponse},  # replaced below: the document describes itself loosely
    ),
]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the whole API."""
    uses: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for op in OPERATIONS:
        uses += [(model, "serialization") for model in op.responses.values()]
        uses += [(model, "validation") for model in (op.body, op.query) if model]
    keys, definitions = models_json_schema(list(dict.fromkeys(uses)), ref_template=_REF)
    schemas = definitions.get("$defs", {})

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return keys[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": kind}}
            for name, kind in op.path_params.items()
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema(ref_template=_REF)
            parameters += [
                {"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in query_schema["properties"].items()
            ]
        if op.idempotency_key:
            parameters.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": "the same key and body return the same run; "
                    "another body with it is a 409",
                }
            )
        responses: dict[str, Any] = {
            str(status): {
                "description": model.__doc__.splitlines()[0] if model.__doc__ else "",
                "content": {"application/json": {"schema": ref(model, "serialization")}},
            }
            for status, model in op.responses.items()
        }
        if op.path == "/api/v1/openapi.json":
            responses["200"]["content"]["application/json"]["schema"] = {"type": "object"}
        if op.plain_text:
            responses["200"] = {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        if not op.public:
            # Any input may be refused before the view (a NUL character, for one).
            responses.setdefault(
                "400",
                {
                    "description": "bad input, each field named",
                    "content": {
                        "application/json": {"schema": ref(ErrorResponse, "serialization")}
                    },
                },
            )
            responses["401"] = {
                "description": "missing or unknown bearer token",
                "content": {"application/json": {"schema": ref(ErrorResponse, "serialization")}},
            }
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method}_{op.path}".replace("/", "_")
            .replace("{", "")
            .replace("}", ""),
            "parameters": parameters,
            "responses": responses,
            "security": [] if op.public else [{"bearer": []}],
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.body, "validation")}},
            }
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nightly-etl",
            "version": API_VERSION,
            "description": "Trigger and watch batch ETL runs. JSON only; a bearer token "
            "(ETL_API_TOKEN, or a read-only ETL_API_READ_TOKEN for GET) on every route "
            "but /healthz and /readyz.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(openapi_document())
