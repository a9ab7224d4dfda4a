"""Errors as JSON: every 4xx names what was wrong. A domain error (etl.domain.errors)
answers the status of its kind; views let it propagate."""

from __future__ import annotations

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from api.models import ErrorResponse, FieldError
from etl.domain.errors import ErrorKind, EtlError

# What each kind of domain error answers; the one place an error becomes a status.
STATUS_BY_KIND: dict[ErrorKind, int] = {
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
}


class ApiError(Exception):
    """An error with an HTTP status, a message and optional field details."""

    def __init__(self, status: int, message: str, details: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def error_response(
    status: int, message: str, details: list[FieldError] | None = None
) -> tuple[Response, int]:
    """A JSON error body with the given status."""
    body = ErrorResponse(error=message, details=details or [])
    return jsonify(body.model_dump()), status


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's errors as (field, message) pairs."""
    details = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        details.append(
            FieldError(
                field=f"{prefix}{path}" if path else prefix.rstrip(".") or "body",
                message=error["msg"],
            )
        )
    return details


def register_error_handlers(app: Flask) -> None:
    """Turn every error, ours and werkzeug's, into a JSON body."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return error_response(exc.status, exc.message, exc.details)

    @app.errorhandler(EtlError)
    def _domain_error(exc: EtlError) -> tuple[Response, int]:
        status = STATUS_BY_KIND[exc.kind]
        if exc.field is not None:  # the request field at fault, named as pydantic would
            return error_response(
                status, "invalid request", [FieldError(field=exc.field, message=str(exc))]
            )
        return error_response(status, str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return error_response(500, "internal error")
