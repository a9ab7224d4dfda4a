"""``/api/v1/dead-letters``: parked messages, listed and replayed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from api.errors import ApiError
from api.models import DeadLetterListResponse, DeadLetterResponse, FieldError, ReplayResponse

bp = Blueprint("dead_letters", __name__, url_prefix="/api/v1")


def _dead_letters() -> Any:
    return current_app.extensions["etl"].dead_letters


@bp.get("/dead-letters")
def list_dead_letters() -> Response:
    """Messages still parked (``?all=true`` adds replayed and purged), newest first."""
    unknown = sorted(set(request.args) - {"run_id", "all"})
    if unknown:
        details = [FieldError(field=name, message="unknown query parameter") for name in unknown]
        raise ApiError(400, "invalid request", details)
    include_handled = request.args.get("all", "false")
    if include_handled not in {"true", "false"}:
        raise ApiError(400, "invalid request", [FieldError(field="all", message="true or false")])
    letters = _dead_letters().list_letters(
        run_id=request.args.get("run_id"), include_handled=include_handled == "true"
    )
    body = DeadLetterListResponse(dead_letters=[DeadLetterResponse.from_letter(x) for x in letters])
    return jsonify(body.model_dump(mode="json"))


@bp.post("/dead-letters/<int:dead_letter_id>/replay")
def replay_dead_letter(dead_letter_id: int) -> Response:
    """Send a parked message's work again, once (a repeat replay sends nothing)."""
    try:
        outcome = _dead_letters().replay(dead_letter_id)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    return jsonify(ReplayResponse(id=outcome.dead_letter_id, action=outcome.action).model_dump())
