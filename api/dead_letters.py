"""``/api/v1/dead-letters``: parked messages, listed and replayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError

from api.context import api_services
from api.errors import ApiError, field_errors
from api.models import (
    DeadLetterListResponse,
    DeadLetterQuery,
    DeadLetterResponse,
    ReplayResponse,
)
from etl.adapters.errors import is_transient

if TYPE_CHECKING:
    from etl.service.dead_letters import DeadLetterService

bp = Blueprint("dead_letters", __name__, url_prefix="/api/v1")


def _dead_letters() -> DeadLetterService:
    dead_letters: DeadLetterService = api_services().dead_letters
    return dead_letters


@bp.get("/dead-letters")
def list_dead_letters() -> Response:
    """Messages still parked (``?all=true`` adds replayed, purged and resolved), newest first."""
    try:
        query = DeadLetterQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc)) from None
    try:
        letters = _dead_letters().list_letters(
            run_id=query.run_id, include_handled=query.all == "true"
        )
    except Exception as exc:
        if is_transient(exc):  # listing first syncs from the broker
            raise ApiError(503, "the broker is unavailable; try again") from None
        raise
    body = DeadLetterListResponse(dead_letters=[DeadLetterResponse.from_letter(x) for x in letters])
    return jsonify(body.model_dump(mode="json"))


@bp.post("/dead-letters/<int:dead_letter_id>/replay")
def replay_dead_letter(dead_letter_id: int) -> Response:
    """Send a parked message's work again, once (a repeat replay sends nothing)."""
    try:
        outcome = _dead_letters().replay(dead_letter_id)
    except Exception as exc:  # not found and the like: the app's EtlError handler
        if is_transient(exc):
            raise ApiError(503, "the broker is unavailable; try again") from None
        raise
    return jsonify(ReplayResponse(id=outcome.dead_letter_id, action=outcome.action).model_dump())
