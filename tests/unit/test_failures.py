"""A failure's traceback, trimmed to what the ledger keeps."""

from __future__ import annotations

from etl.domain.failures import FAILURE_KEPT, failure_text, split_failure


def _raise_deep(depth: int) -> None:
    if depth == 0:
        raise ValueError("bad row 42")
    _raise_deep(depth - 1)


def caught(depth: int) -> BaseException:
    try:
        _raise_deep(depth)
    except ValueError as exc:
        return exc
    raise AssertionError("did not raise")


def test_a_failure_keeps_its_summary_and_innermost_frames() -> None:
    text = failure_text("chunk 3 failed: ValueError: bad row 42", caught(2))
    summary, tb = split_failure(text)
    assert summary == "chunk 3 failed: ValueError: bad row 42"
    assert tb is not None and tb.startswith("Traceback")
    assert "_raise_deep" in tb and tb.rstrip().endswith("ValueError: bad row 42")


def test_a_deep_traceback_is_trimmed_to_the_ledger_and_says_so() -> None:
    text = failure_text("chunk 0 failed", caught(6), limit=500)
    assert len(text) <= 500
    _, tb = split_failure(text)
    assert tb is not None and "outer frames left out" in tb
    assert 'raise ValueError("bad row 42")' in tb  # the innermost frame is kept


def test_without_a_traceback_the_summary_alone() -> None:
    assert failure_text("plan refused", None) == "plan refused"
    assert failure_text("x" * 5000, ValueError("never raised")) == "x" * FAILURE_KEPT
    assert split_failure("one line") == ("one line", None)
    assert split_failure(None) == ("", None)
