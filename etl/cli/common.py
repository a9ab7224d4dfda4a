"""What every ``etl`` subcommand shares: errors, argument types, opening the ledger."""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any, NoReturn

from pydantic import ValidationError

from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.dates import parse_logical_date

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, and what it asked for did not succeed
EXIT_USAGE = 2


class CliError(Exception):
    """An error to print as one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as one-line CliErrors instead of printed."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message}", EXIT_USAGE)


def param(text: str) -> tuple[str, str]:
    """``k=v`` -> (k, v)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def logical_date(text: str) -> date:
    """A YYYY-MM-DD date."""
    try:
        return parse_logical_date(text)
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


def open_services(settings: Settings) -> Services:
    """Services with a migrated ledger, or a one-line CliError naming the database."""
    from etl.adapters.db import redact_url
    from etl.bootstrap import build_services
    from etl.pipelines import load_pipeline_modules

    try:
        load_pipeline_modules(settings.pipeline_modules)
    except (ImportError, ValueError) as exc:
        raise CliError(f"cannot load ETL_PIPELINE_MODULES: {exc}", EXIT_USAGE) from None
    try:
        return build_services(settings)
    except Exception as exc:
        raise CliError(
            f"cannot open the ledger at {redact_url(settings.database_url)}: {first_line(exc)}"
        ) from None


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
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in record.__dict__.items()
    }
