"""``etl backfill`` end to end: a worker subprocess on the real broker, one run per
date, never more than --max-active at once, every output checked, a repeat skipping
what succeeded."""

from __future__ import annotations

import subprocess
from datetime import date, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import Run, RunState, Trigger

from support import ChildProcess, assert_run_output_matches_source, run_etl

pytestmark = pytest.mark.e2e

# Dates no other test runs orders_daily for: the backfill skips a date that has a run.
START, DAYS = date(2030, 7, 1), 6


def backfill(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ["backfill", "orders_daily", "--start", str(START)]
    argv += ["--end", str(START + timedelta(days=DAYS - 1)), *args]
    return run_etl(settings, *argv, timeout_s=300)


def most_active_at_once(runs: list[Run]) -> int:
    events = sorted(
        [(run.started_at, 1) for run in runs] + [(run.finished_at, -1) for run in runs],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    active = peak = 0
    for _, change in events:
        active += change
        peak = max(peak, active)
    return peak


def test_a_backfill_runs_each_date_once_with_at_most_max_active(
    service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    seed_orders(services.source_engine, 4_000)
    worker = ChildProcess.etl(
        ["worker", "--concurrency", "2"], service_settings, tmp_path / "worker.log"
    )
    try:
        worker.wait_for_log("ready.")
        done = backfill(service_settings, "--max-active", "2", "--param", "chunk_size=1000")
    finally:
        worker.stop()

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    backfill_id = next(line for line in lines if line.startswith("backfill ")).split()[1]
    progress = [line for line in lines if " runs ended" in line]
    chunks = DAYS * 4  # 4,000 orders in chunks of 1,000
    assert progress[-1].startswith(
        f"[{'#' * 24}] {chunks}/{chunks} chunks | {DAYS}/{DAYS} runs ended ({DAYS} succeeded) | "
        "0 active"
    )
    assert " rows/s | " in progress[-1]
    assert len(progress) >= 3  # plain lines, one per change, off a terminal

    runs = services.ledger.backfill_runs(backfill_id)
    assert [run.logical_date for run in runs] == [START + timedelta(d) for d in range(DAYS)]
    assert {(run.trigger, run.state) for run in runs} == {(Trigger.BACKFILL, RunState.SUCCEEDED)}
    assert most_active_at_once(runs) <= 2
    for run in runs:
        assert_run_output_matches_source(services, run)
    first_start = min(run.started_at for run in runs if run.started_at)
    last_end = max(run.finished_at for run in runs if run.finished_at)
    durations = [(run.finished_at - run.started_at).total_seconds() for run in runs]  # type: ignore[operator]
    print(
        f"\nbackfill of {DAYS} dates x 4,000 rows, max-active 2: "
        f"{(last_end - first_start).total_seconds():.2f}s first start to last commit; "
        f"runs {min(durations):.2f}-{max(durations):.2f}s each"
    )
    assert all(a.logical_date < b.logical_date for a, b in pairwise(runs))

    # the same backfill again starts nothing: every date succeeded
    recorded = len(services.ledger.list_runs(pipeline="orders_daily", limit=1000))
    again = backfill(service_settings, "--max-active", "2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" skip ") == DAYS and "started" not in again.stdout
    redo = backfill(service_settings, "--reprocess", "all", "--dry-run")
    assert redo.returncode == 0 and redo.stdout.count("would run") == DAYS
    assert len(services.ledger.list_runs(pipeline="orders_daily", limit=1000)) == recorded
