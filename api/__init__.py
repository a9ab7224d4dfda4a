"""The Flask app factory: ``create_app(settings)``; gunicorn loads ``api:wsgi_app()``."""

from __future__ import annotations

from flask import Flask, Response, abort, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from api import backfills, dashboard, dead_letters, health, metrics, openapi, pipelines, runs
from api.auth import configured_tokens, require_bearer_token
from api.context import ApiServices
from api.errors import ApiError, register_error_handlers
from api.middleware import BODY_TOO_LARGE, ChunkedBodyLimit, SecurityHeaders
from api.models import FieldError
from etl.adapters.gevent_postgres import wait_as_greenlet
from etl.adapters.probe import readiness_problems
from etl.adapters.topology import all_queues, queue_stats
from etl.bootstrap import build_services
from etl.config import Settings, SettingsError, load_settings
from etl.logs import configure_logging

__all__ = ["ApiServices", "build_api_services", "create_app", "wsgi_app"]

PUBLIC_BLUEPRINTS = frozenset({health.bp.name})
NUL = "must not contain NUL characters"


def build_api_services(settings: Settings) -> ApiServices:
    """The ledger and the services of the composition root. The ledger is not migrated
    here, in every gunicorn worker: ``etl api`` did it once before they started."""
    services = build_services(settings, migrate=False)
    return ApiServices(
        ledger=services.ledger,
        run_service=services.runs,
        dead_letters=services.dead_letters,
        readiness=lambda: readiness_problems(
            services.ledger.engine,
            services.parts,
            settings.broker_url,
            broker_ssl=settings.broker_use_ssl,
        ),
        queue_stats=lambda: queue_stats(
            settings.broker_url, [q.name for q in all_queues()], ssl=settings.broker_use_ssl
        ),
    )


def create_app(settings: Settings | None = None, services: ApiServices | None = None) -> Flask:
    """Build the API. Refuses to start without ``ETL_API_TOKEN``."""
    settings = settings or load_settings()
    tokens = configured_tokens(settings.api_token.get_secret_value())
    if not tokens:
        raise SettingsError(
            "ETL_API_TOKEN is not set: the API refuses to run without authentication"
        )
    read_tokens = configured_tokens(settings.api_read_token.get_secret_value())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["etl"] = services or build_api_services(settings)
    app.extensions["etl_settings"] = settings

    @app.before_request
    def _authenticate() -> None:
        # Deny by default: a route is public only if its blueprint says so.
        if request.blueprint not in PUBLIC_BLUEPRINTS:
            writes = request.method not in {"GET", "HEAD", "OPTIONS"}
            browser = request.blueprint == dashboard.bp.name
            try:
                # The dashboard shows its action buttons only to a token that may write.
                g.etl_can_write = require_bearer_token(
                    tokens, read_tokens, writes=writes, allow_basic=browser
                )
            except ApiError as exc:
                if browser and exc.status == 401:  # let the browser ask for the token
                    realm = 'Basic realm="nightly-etl (user: any, password: an API token)"'
                    abort(Response("authentication required\n", 401, {"WWW-Authenticate": realm}))
                raise

    @app.before_request
    def _body_within_limit() -> None:
        # A chunked body over ETL_API_MAX_BODY_BYTES (api.middleware.ChunkedBodyLimit);
        # one with a Content-Length over it is refused by werkzeug when it is read.
        if request.environ.get(BODY_TOO_LARGE):
            raise RequestEntityTooLarge()

    @app.before_request
    def _no_nul_characters() -> None:
        # PostgreSQL cannot store a NUL in text or JSONB: refuse it here, by name,
        # rather than fail in the database with a 500.
        if "\x00" in request.path:
            raise ApiError(400, "invalid request", [FieldError(field="path", message=NUL)])
        for name, value in request.args.items(multi=True):
            if "\x00" in value or "\x00" in name:
                raise ApiError(400, "invalid request", [FieldError(field=name, message=NUL)])
        if request.is_json and _has_nul(request.get_json(silent=True)):
            raise ApiError(400, "invalid request", [FieldError(field="body", message=NUL)])

    app.register_blueprint(health.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(dead_letters.bp)
    app.register_blueprint(backfills.bp)
    app.register_blueprint(pipelines.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dashboard.bp)
    register_error_handlers(app)
    app.wsgi_app = SecurityHeaders(  # type: ignore[method-assign]
        ChunkedBodyLimit(app.wsgi_app, settings.api_max_body_bytes)
    )
    return app


def _has_nul(document: object) -> bool:
    if isinstance(document, str):
        return "\x00" in document
    if isinstance(document, dict):
        return any(_has_nul(key) or _has_nul(value) for key, value in document.items())
    if isinstance(document, list):
        return any(_has_nul(item) for item in document)
    return False


def wsgi_app() -> Flask:
    """What gunicorn serves (``etl api``): the app, logging in ``ETL_LOG_FORMAT``."""
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level, "api")
    # In a gevent worker (etl api's default), PostgreSQL's waits must yield too, or one
    # slow query would stall every request of the worker.
    wait_as_greenlet()
    return create_app(settings)
