"""The admission rule on its own: which queued runs get a place (etl.domain.admission)."""

from __future__ import annotations

from etl.domain.admission import Candidate, admissible, waits_for_a_place


def runs(*backfills: str | None) -> list[Candidate]:
    return [Candidate(f"r{i}", backfill) for i, backfill in enumerate(backfills)]


def test_a_pipeline_with_free_places_admits_that_many_in_queue_order() -> None:
    queued = runs(None, None, None, None)
    assert admissible(queued, active={None: 1}, pipeline_limit=3, backfill_limits={}) == [
        "r0",
        "r1",
    ]


def test_a_full_pipeline_admits_nothing() -> None:
    queued = runs(None, "b")
    active = {None: 1, "b": 1}
    assert admissible(queued, active=active, pipeline_limit=2, backfill_limits={"b": 5}) == []


def test_a_backfill_at_its_max_active_is_skipped_and_later_runs_still_get_places() -> None:
    queued = runs("b", "b", None, "c")
    chosen = admissible(
        queued, active={"b": 1}, pipeline_limit=None, backfill_limits={"b": 2, "c": 1}
    )
    assert chosen == ["r0", "r2", "r3"]  # r1 waits: b has 1 active + r0


def test_both_limits_hold_at_once() -> None:
    queued = runs("b", "b", "b", None)
    chosen = admissible(queued, active={}, pipeline_limit=2, backfill_limits={"b": 1})
    assert chosen == ["r0", "r3"]


def test_a_pipeline_without_limit_admits_every_run_of_no_backfill() -> None:
    queued = runs(None, None)
    assert admissible(queued, active={None: 50}, pipeline_limit=None, backfill_limits={}) == [
        "r0",
        "r1",
    ]


def test_nothing_queued_admits_nothing() -> None:
    assert admissible([], active={}, pipeline_limit=1, backfill_limits={}) == []


def test_only_a_limited_run_waits_for_a_place() -> None:
    assert not waits_for_a_place(Candidate("r"), pipeline_limit=None)
    assert waits_for_a_place(Candidate("r"), pipeline_limit=1)
    assert waits_for_a_place(Candidate("r", "b"), pipeline_limit=None)
