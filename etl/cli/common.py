"""What every ``etl`` subcommand shares: errors, argument types, opening the ledger."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from pydantic import ValidationError

from etl.config import Settings
from etl.domain.errors import ErrorKind, EtlError
from etl.domain.intervals import parse_date_or_timestamp

if TYPE_CHECKING:
    # Not at import: the composition root pulls in prometheus_client, which must not be
    # loaded before ``etl worker`` sets PROMETHEUS_MULTIPROC_DIR.
    from etl.bootstrap import Services

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and what it asked for did not succeed
EXIT_USAGE = 2

DATABASE_FIX = "is PostgreSQL running there, and is ETL_DATABASE_URL right?"

# What each kind of domain error exits with; the one place an error becomes a status.
EXIT_BY_KIND: dict[ErrorKind, int] = {
    "invalid": EXIT_USAGE,
    "not_found": EXIT_FAILED,
    "conflict": EXIT_FAILED,
    "unavailable": EXIT_FAILED,
}


class CliError(Exception):
    """An error to print as one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def from_error(cls, exc: EtlError) -> CliError:
        """A domain error as one line, with the exit status of its kind."""
        return cls(str(exc), EXIT_BY_KIND[exc.kind])


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as one-line CliErrors instead of printed:
    ``etl: error: runs: argument --limit: ...; see etl runs --help``."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("etl").strip()
        where = f"{command}: " if command else ""
        raise CliError(f"{where}{message}; see {self.prog} --help", EXIT_USAGE)


def param(text: str) -> tuple[str, str]:
    """``k=v`` -> (k, v)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def date_or_timestamp(text: str) -> date | datetime:
    """A YYYY-MM-DD date, or an ISO 8601 timestamp with its offset."""
    try:
        return parse_date_or_timestamp(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_pipelines(settings: Settings) -> None:
    """Register the deployment's pipelines, or a one-line CliError (exit 2)."""
    from etl.pipelines import load_pipeline_modules

    try:
        load_pipeline_modules(settings.pipeline_modules, settings.pipeline_path)
    except (ImportError, ValueError) as exc:
        raise CliError(f"cannot load ETL_PIPELINE_MODULES: {exc}", EXIT_USAGE) from None


def open_services(settings: Settings) -> Services:
    """Services with a migrated ledger, or a one-line CliError naming the database."""
    from etl.adapters.db import redact_url
    from etl.bootstrap import build_services

    load_pipelines(settings)
    try:
        return build_services(settings)
    except Exception as exc:
        raise CliError(
            f"cannot open the ledger at {redact_url(settings.database_url)}: {first_line(exc)}; "
            f"{DATABASE_FIX}"
        ) from None


def migrate_ledger(settings: Settings) -> int:
    """Create or migrate the ledger (once per deployment start: ``etl db upgrade``, the
    worker, ``etl api`` before gunicorn forks); its schema version, or a CliError."""
    from etl.adapters.db import redact_url
    from etl.bootstrap import migrate_ledger as migrate

    try:
        return migrate(settings)
    except Exception as exc:
        raise CliError(
            f"cannot migrate the ledger at {redact_url(settings.database_url)}: "
            f"{first_line(exc)}; {DATABASE_FIX}"
        ) from None


@contextmanager
def reaching_broker(settings: Settings) -> Iterator[None]:
    """RabbitMQ unreachable, or refusing (a queue not declared, a missing permission),
    as one line with the fix."""
    from etl.adapters.db import redact_url
    from etl.adapters.errors import BROKER_REFUSED, BROKER_UNREACHABLE

    where = redact_url(settings.broker_url)
    try:
        yield
    except BROKER_UNREACHABLE as exc:
        raise CliError(
            f"cannot reach RabbitMQ at {where}: {first_line(exc)}; start it, or point "
            "ETL_BROKER_URL at it"
        ) from None
    except BROKER_REFUSED as exc:
        raise CliError(
            f"RabbitMQ at {where} refused: {first_line(exc)}; a worker declares the queues "
            "when it starts, and `etl check` names what is missing"
        ) from None


# The settings holding a URL, checked before any command uses one.
URL_SETTINGS = (
    ("ETL_DATABASE_URL", "database_url"),
    ("ETL_SOURCE_DATABASE_URL", "source_database_url"),
    ("ETL_BROKER_URL", "broker_url"),
    ("ETL_RESULT_BACKEND", "result_backend"),
    ("ETL_S3_ENDPOINT_URL", "s3_endpoint_url"),
)


def check_urls(settings: Settings) -> None:
    """A URL setting that cannot be parsed (no scheme, a port that is not a number) as
    one line naming the variable (exit 2), before a driver fails on it at length."""
    for variable, field in URL_SETTINGS:
        url: str = getattr(settings, field)
        problem = url_problem(url) if url else None
        if problem is not None:
            raise CliError(f"{variable} {masked_url(url)}: {problem}", EXIT_USAGE)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a URL a client can connect to, or None."""
    if "://" not in url:
        return "not a URL; write scheme://[user[:password]@]host[:port]/..."
    parts = urlsplit(url)
    try:
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        if "@" not in parts.netloc and "@" in url.partition("://")[2]:
            # A / ? or # in the password ended the host part early: not echoed, it is
            # part of the password.
            return "cannot be parsed; percent-encode the password's / ? # @ (e.g. / as %2F)"
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        return f"the port {port!r} is not a number from 0 to 65535; write host:port"
    return None


def masked_url(url: str) -> str:
    """The URL with its password replaced by ***, without parsing the rest (for a URL
    that may not parse)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


def first_line(exc: BaseException) -> str:
    """An error's first line (driver messages name the server, never the password)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_params_error(exc: ValidationError) -> str:
    """pydantic's errors on run params as one line naming each param."""
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"param {field}: {error['msg']}")
    return "; ".join(problems)


def as_document(record: Any) -> dict[str, Any]:
    """A Run or Chunk dataclass as a JSON-ready dict."""
    return {key: _json_value(value) for key, value in record.__dict__.items()}


def _json_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):  # dates and datetimes
        return value.isoformat()
    if hasattr(value, "as_dict"):  # a run's window
        return value.as_dict()
    return value
