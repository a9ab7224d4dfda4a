"""Two Beat processes, one worker, the real services: exactly one dispatch per slot and
one run per slot's interval; the leader killed, the other Beat takes over within a
bounded time and carries on without a gap."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from etl.adapters.ledger.beat import BeatState
from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import PLAN_QUEUE, queue_stats
from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.runs import Run, RunState, Trigger
from etl.service.lifecycle import wait_for_run
from etl.worker.app import TASK_START_SCHEDULED_RUN

from builders import beat_ticks
from support import ChildProcess, wait_until

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
TICK_S = 3
ENTRY = "pipeline:ticking_orders"
LEADER = re.compile(r"beat (\S+) is now the leader")


@pytest.fixture
def beat_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(
        update={"pipeline_modules": "scheduling_pipelines", "beat_leader_poll_s": 1.0}
    )


@pytest.fixture
def beat_services(beat_settings: Settings) -> Iterator[Services]:
    built = build_services(beat_settings)
    built.parts.ensure_bucket()
    seed_orders(built.source_engine, 500)
    yield built
    built.close()


def start(role: str, args: list[str], settings: Settings, tmp_path: Path) -> ChildProcess:
    return ChildProcess.etl(
        args,
        settings,
        tmp_path / f"{role}.log",
        extra_env={"PYTHONPATH": str(TESTS_DIR), "ETL_TEST_TICK_S": str(TICK_S)},
    )


def test_two_beats_dispatch_each_slot_once_and_the_survivor_takes_over(
    beat_settings: Settings,
    beat_services: Services,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    state = BeatState(beat_services.ledger.engine)
    worker = start("worker", ["worker", "--concurrency", "1"], beat_settings, tmp_path)
    request.addfinalizer(worker.stop)
    beats = {name: start(name, ["beat"], beat_settings, tmp_path) for name in ("beat-a", "beat-b")}
    try:
        worker.wait_for_log("ready.")
        wait_until(
            lambda: len(beat_ticks(state.engine, ENTRY)) >= 4, timeout_s=60, what="four slots sent"
        )
        leader_holder = beat_ticks(state.engine, ENTRY)[-1].dispatched_by
        leader_pid = int(leader_holder.rsplit(":", 1)[1])
        [leader_name] = [n for n, b in beats.items() if b.process.pid == leader_pid]
        [follower_name] = [n for n in beats if n != leader_name]
        follower = beats[follower_name]
        assert "is now the leader" not in follower.log()

        os.killpg(leader_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        follower.wait_for_log("is now the leader", timeout_s=30)
        takeover_s = time.monotonic() - killed_at
        wait_until(
            lambda: (
                sum(t.dispatched_by != leader_holder for t in beat_ticks(state.engine, ENTRY)) >= 3
            ),
            timeout_s=60,
            what="three slots sent by the new leader",
        )
        follower.stop()
    finally:
        for beat in beats.values():
            beat.stop()

    ticks = beat_ticks(state.engine, ENTRY)
    # Each recorded slot reached the worker once, from whichever Beat sent it: count
    # the messages it received once nothing is left in its queue.
    wait_until(
        lambda: queue_stats(beat_settings.broker_url, [PLAN_QUEUE]) == {PLAN_QUEUE: (0, 1)},
        timeout_s=30,
        what="the plan queue drained",
    )
    received = len(
        re.findall(rf"{re.escape(TASK_START_SCHEDULED_RUN)}\[\S+\] received", worker.log())
    )
    assert received == len(ticks), (received, len(ticks))
    slots = [tick.slot for tick in ticks]
    holders = [tick.dispatched_by for tick in ticks]
    # every slot from the first to the last, once each: none lost in the takeover
    assert all(b - a == timedelta(seconds=TICK_S) for a, b in pairwise(slots))
    assert len(set(holders)) == 2
    switch = holders.index(next(h for h in holders if h != leader_holder))
    assert set(holders[:switch]) == {leader_holder} and leader_holder not in holders[switch:]
    print(
        f"\n{len(ticks)} slots sent and {received} received, {switch} by the first leader, "
        f"{len(ticks) - switch} by the second; takeover {takeover_s:.1f}s after SIGKILL"
    )
    assert takeover_s < 15

    # one run per slot: each covers the TICK_S seconds that ended at its slot
    wait_until(
        lambda: len(scheduled_runs(beat_services)) == len(ticks),
        timeout_s=60,
        what="a run for each slot",
    )
    scheduled = scheduled_runs(beat_services)
    assert [(run.interval.start, run.interval.end) for run in scheduled] == [
        (slot - timedelta(seconds=TICK_S), slot) for slot in slots
    ]
    final = wait_for_run(beat_services.ledger, scheduled[0].id, timeout_s=60)
    assert final.state is RunState.SUCCEEDED, final.reason


def scheduled_runs(services: Services) -> list[Run]:
    """The scheduled runs of ticking_orders, by interval."""
    runs = services.ledger.list_runs(pipeline="ticking_orders", trigger=Trigger.SCHEDULE, limit=500)
    return sorted(runs, key=lambda run: run.interval.start)
