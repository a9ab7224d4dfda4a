"""``/healthz``: the process is up (no authentication, no dependencies checked)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process serves requests."""
    return jsonify({"status": "ok"})
