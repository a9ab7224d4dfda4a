"""Domain errors: each has a kind, and each entry point maps every kind in one place."""

from __future__ import annotations

import pytest

from api.errors import STATUS_BY_KIND
from etl.cli.common import EXIT_BY_KIND, EXIT_FAILED, EXIT_USAGE
from etl.domain import errors
from etl.domain.errors import EtlError, UnknownPipeline

ERRORS = [
    value
    for value in vars(errors).values()
    if isinstance(value, type) and issubclass(value, EtlError) and value is not EtlError
]


def test_the_brief_errors_are_all_domain_errors() -> None:
    names = {error.__name__ for error in ERRORS}
    assert {
        "RunNotFound",
        "ChunkNotFound",
        "BackfillNotFound",
        "DeadLetterNotFound",
        "IdempotencyConflict",
        "WatermarkMoved",
        "BackfillConflict",
        "UnknownPipeline",
        "RunNotRetryable",
        "RunNotCancellable",
        "EnqueueFailed",
        "PlanTooLarge",
    } <= names


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__name__)
def test_every_error_kind_has_an_http_status_and_an_exit_status(error: type[EtlError]) -> None:
    assert error.kind in STATUS_BY_KIND
    assert error.kind in EXIT_BY_KIND


def test_old_catches_still_catch() -> None:
    assert issubclass(errors.RunNotFound, LookupError)
    assert issubclass(errors.DeadLetterNotFound, LookupError)
    assert issubclass(errors.UnknownPipeline, KeyError)
    assert issubclass(errors.PlanTooLarge, ValueError)


def test_an_unknown_pipeline_names_the_known_ones() -> None:
    error = UnknownPipeline("nope", ["b", "a"])
    assert str(error) == "unknown pipeline 'nope' (known: a, b)"
    assert (STATUS_BY_KIND[error.kind], EXIT_BY_KIND[error.kind]) == (400, EXIT_USAGE)


def test_not_found_is_404_and_exit_1() -> None:
    assert STATUS_BY_KIND["not_found"] == 404
    assert EXIT_BY_KIND["not_found"] == EXIT_FAILED
    assert STATUS_BY_KIND["conflict"] == 409
    assert STATUS_BY_KIND["unavailable"] == 503
