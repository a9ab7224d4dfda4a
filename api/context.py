"""What a view takes from the app and the request: the app's services and a JSON body
checked against its model (415 for another content type, 400 naming each field)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError, field_errors
from api.models import FieldError
from etl.adapters.ledger import Ledger
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService

Model = TypeVar("Model", bound=BaseModel)


@dataclass
class ApiServices:
    """What the API's views use: the ledger to read, the run service to start runs."""

    ledger: Ledger
    run_service: RunService
    dead_letters: DeadLetterService
    # /readyz: each dependency by name, None when it answers, else the problem.
    readiness: Callable[[], dict[str, str | None]] = field(default=dict)
    # /metrics: (messages ready, consumers) per queue, from the broker.
    queue_stats: Callable[[], dict[str, tuple[int, int]]] = field(default=dict)


def api_services() -> ApiServices:
    """The services of the app serving this request."""
    services: ApiServices = current_app.extensions["etl"]
    return services


def json_body(model: type[Model]) -> Model:
    """The request's JSON object as ``model``; raises ApiError naming what is wrong."""
    if not request.is_json:
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "the body must be a JSON object",
            [FieldError(field="body", message="not a JSON object")],
        )
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc)) from None
