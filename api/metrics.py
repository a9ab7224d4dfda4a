"""``/metrics``: the ledger's and the broker's figures for Prometheus (see etl.metrics).

Authenticated like every route but health: Prometheus sends a (read-only) token with
``authorization: {credentials_file: ...}`` in its scrape config.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.context import api_services
from etl.metrics import LedgerCollector

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """The current figures in Prometheus's text format."""
    registry = current_app.extensions.get("etl_metrics")
    if registry is None:
        services = api_services()
        registry = CollectorRegistry()
        registry.register(LedgerCollector(services.ledger, services.queue_stats))
        current_app.extensions["etl_metrics"] = registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
