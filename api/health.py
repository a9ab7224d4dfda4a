"""``/healthz`` (the process is up) and ``/readyz`` (its dependencies answer).

Both are public, so that load balancers and orchestrators can probe them without a
token; they therefore say only which dependency failed and the kind of error, never a
host, URL or message (those go to the log).
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from api.context import api_services
from api.models import HealthResponse, ReadinessResponse

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process serves requests."""
    return jsonify(HealthResponse(status="ok").model_dump())


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """200 when the broker, the ledger database and the bucket all answer, else 503;
    each check ``ok`` or ``unavailable (<kind>)``: a bucket that does not exist is
    ``unavailable (NoSuchBucket)`` (etl.adapters.probe.bucket_problem)."""
    problems = api_services().readiness()
    checks = {}
    for name, problem in problems.items():
        if problem is None:
            checks[name] = "ok"
        else:
            current_app.logger.warning("readiness: %s: %s", name, problem)
            checks[name] = "unavailable (" + problem.split(":", 1)[0] + ")"
    ready = all(problem is None for problem in problems.values())
    body = ReadinessResponse(status="ready" if ready else "not ready", checks=checks)
    return jsonify(body.model_dump()), 200 if ready else 503
