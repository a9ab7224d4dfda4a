"""Beat's scheduler: slots from the pipelines' schedules, state in the ledger database,
and one leader among any number of Beat processes.

``Dispatcher`` is the logic, driven by an explicit clock so tests can walk it through a
daylight-saving change; ``DatabaseScheduler`` plugs it into Celery Beat's loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from celery.beat import Scheduler

from beat.schedule import ON_TIME_GRACE_S, Entry, schedule_entries
from etl.adapters.db import make_engine
from etl.adapters.ledger.beat import BeatState, LeaderLock
from etl.domain.schedules import due_slots
from etl.pipelines import PIPELINES

logger = logging.getLogger(__name__)

# A follower tries to take the lead this often; a leader wakes at least this often to
# check it still holds the lock. Takeover after a leader dies is bounded by this
# (ETL_BEAT_LEADER_POLL_S in a deployment).
LEADER_POLL_S = 5.0

# Sends a task by name with arguments and an optional expiry (seconds).
Send = Callable[[str, list[Any], int | None], None]


class Dispatcher:
    """Decides, at each tick, what every entry sends, and records it."""

    def __init__(
        self,
        entries: list[Entry],
        state: BeatState,
        lock: LeaderLock,
        send: Send,
        *,
        holder: str,
        grace_s: float = ON_TIME_GRACE_S,
        poll_s: float = LEADER_POLL_S,
    ) -> None:
        self.entries = entries
        self.state = state
        self.lock = lock
        self.send = send
        self.holder = holder
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.leading = False

    def tick(self, now: datetime) -> float:
        """Dispatch what is due at ``now``; returns the seconds until the next tick."""
        leading = self.lock.hold()
        if leading != self.leading:
            logger.warning(
                "beat %s %s", self.holder, "is now the leader" if leading else "is not the leader"
            )
            self.leading = leading
        if not leading:
            return self.poll_s
        next_due: list[datetime] = []
        for entry in self.entries:
            try:
                last = self.state.last_slot(entry.name)
                if last is None:
                    last = self.state.start_entry(entry.name, now)
                    logger.info("beat: new entry %s starts after %s", entry.name, last)
                self._dispatch(entry, last, now)
            except Exception:
                # The database or the broker is away: nothing was recorded, so the same
                # slots are due again at the next tick.
                logger.exception("beat: could not dispatch %s; trying again", entry.name)
                return self.poll_s
            next_due.append(entry.schedule.next_after(max(last, now)))
        wait = (min(next_due) - now).total_seconds() if next_due else self.poll_s
        return max(0.0, min(wait, self.poll_s))

    def _dispatch(self, entry: Entry, last: datetime, now: datetime) -> None:
        decision = due_slots(
            entry.schedule,
            last_slot=last,
            now=now,
            catch_up=entry.catch_up,
            catch_up_limit=entry.catch_up_limit,
            grace_s=self.grace_s,
        )
        if decision.last_slot == last:
            return
        on_time_after = now.timestamp() - self.grace_s
        plan = [
            (slot, entry.logical_date(slot), slot.timestamp() < on_time_after)
            for slot in decision.slots
        ]

        def send(slot: datetime, logical_date: date | None) -> None:
            args = entry.args(slot)
            self.send(entry.task, args, entry.expires_s)
            logger.info(
                "beat: sent %s for slot %s%s",
                entry.name,
                slot.isoformat(),
                f" (interval {args[1]})" if len(args) > 1 else "",
            )

        self.state.advance(
            entry.name,
            expected_last=last,
            new_last=decision.last_slot,
            dispatch=plan,
            holder=self.holder,
            send=send,
        )
        for slot in decision.skipped:
            logger.warning(
                "beat: skipped missed slot %s of %s (catch-up %s)",
                slot.isoformat(),
                entry.name,
                entry.catch_up,
            )

    def close(self) -> None:
        """Give up leadership."""
        self.lock.release()


class DatabaseScheduler(Scheduler):  # type: ignore[misc]
    """Celery Beat's scheduler, backed by the ledger database instead of a shelve file."""

    dispatcher: Dispatcher

    def setup_schedule(self) -> None:
        """Build the dispatcher from the app's Settings and the registered pipelines."""
        settings = self.app.settings
        engine = make_engine(settings.database_url, 2, settings.database_ssl_args)
        self._engine = engine
        holder = f"{socket.gethostname()}:{os.getpid()}"

        def send(task: str, args: list[Any], expires_s: int | None) -> None:
            self.app.send_task(task, args=args, expires=expires_s)

        self.dispatcher = Dispatcher(
            schedule_entries(PIPELINES),
            BeatState(engine),
            LeaderLock(settings.database_url, settings.database_ssl_args),
            send,
            holder=holder,
            poll_s=settings.beat_leader_poll_s,
        )
        for entry in self.dispatcher.entries:
            logger.info("beat: entry %s: %s", entry.name, entry.schedule.describe())

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One pass of Beat's loop; returns how long to sleep."""
        return self.dispatcher.tick(datetime.now(UTC))

    def sync(self) -> None:
        """Nothing to flush: every dispatch is committed as it happens."""

    def close(self) -> None:
        """Release leadership and the database connections."""
        # Beat also builds a lazy instance, never set up, just for its banner.
        if hasattr(self, "dispatcher"):
            self.dispatcher.close()
            self._engine.dispose()

    @property
    def info(self) -> str:
        """What Beat's banner shows for the scheduler."""
        return "ledger database, one leader among all Beats"
