"""Beat's state in the ledger database, and the lock that makes one Beat the leader.

Any number of Beat processes may run; the one holding the leader lock dispatches. What
it dispatched is recorded here, so a restarted Beat, or another that takes over, carries
on from the last handled slot: it neither sends a slot again nor forgets one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import date, datetime

from sqlalchemy import Connection, Engine, create_engine, select, text, update
from sqlalchemy.pool import NullPool

from etl.adapters.ledger.locks import BEAT_LEADER_LOCK_ID
from etl.adapters.ledger.rows import aware_utc, insert_ignoring_conflicts
from etl.adapters.ledger.schema import schedule_state_table, schedule_ticks_table
from etl.domain.clock import utc_now


class BeatState:
    """Per entry: the last slot handled, and every slot dispatched."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def last_slot(self, entry: str) -> datetime | None:
        """The last slot handled for an entry; None for an entry Beat has never seen."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(schedule_state_table.c.last_slot).where(
                    schedule_state_table.c.entry == entry
                )
            ).scalar()
        return aware_utc(value)

    def start_entry(self, entry: str, moment: datetime) -> datetime:
        """Record a new entry as handled up to ``moment`` (its history is not run: that
        is what a backfill is for); returns the recorded slot, which another Beat may
        have written first."""
        with self.engine.begin() as conn:
            conn.execute(
                insert_ignoring_conflicts(
                    conn,
                    schedule_state_table,
                    {"entry": entry, "last_slot": moment, "updated_at": utc_now()},
                )
            )
        recorded = self.last_slot(entry)
        if recorded is None:  # pragma: no cover - the row was deleted meanwhile
            raise RuntimeError(f"Beat's state for {entry} vanished while it was written")
        return recorded

    def advance(
        self,
        entry: str,
        *,
        expected_last: datetime,
        new_last: datetime,
        dispatch: list[tuple[datetime, date | None, bool]],
        holder: str,
        send: Callable[[datetime, date | None], None],
    ) -> list[datetime]:
        """Move an entry from ``expected_last`` to ``new_last`` and send its slots, in one
        transaction; returns the slots sent.

        Nothing happens if the entry is no longer at ``expected_last`` (another Beat
        handled it). If a send fails, the transaction rolls back and the same slots are
        due again on the next tick: a slot can be sent twice then (the ledger's unique
        logical date makes that harmless), but never lost.
        """
        sent = []
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(schedule_state_table)
                .where(
                    schedule_state_table.c.entry == entry,
                    schedule_state_table.c.last_slot == expected_last,
                )
                .values(last_slot=new_last, updated_at=utc_now())
            ).rowcount
            if moved != 1:
                return []
            for slot, logical_date, catch_up in dispatch:
                if logical_date is not None and not self._record_tick(
                    conn, entry, slot, logical_date, catch_up, holder
                ):
                    continue
                send(slot, logical_date)
                sent.append(slot)
        return sent

    @staticmethod
    def _record_tick(
        conn: Connection,
        entry: str,
        slot: datetime,
        logical_date: date,
        catch_up: bool,
        holder: str,
    ) -> bool:
        values = {
            "entry": entry,
            "slot": slot,
            "logical_date": logical_date,
            "catch_up": int(catch_up),
            "dispatched_by": holder,
            "dispatched_at": utc_now(),
        }
        inserted: int = conn.execute(
            insert_ignoring_conflicts(conn, schedule_ticks_table, values)
        ).rowcount
        return inserted == 1


class LeaderLock:
    """A PostgreSQL session advisory lock held on a connection of its own.

    The lock lives as long as the connection: when the leader dies, its connection
    closes and PostgreSQL releases the lock at once, so a waiting Beat takes over at its
    next attempt. TCP keepalives on the server side bound the wait when the leader's
    host vanishes without closing the connection. On SQLite (one machine, embedded use)
    there is nobody to compete with and the lock is always held.
    """

    def __init__(self, url: str, ssl_args: dict[str, str] | None = None) -> None:
        connect_args = _lock_connect_args(url) | (ssl_args or {})
        self._engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        self._conn: Connection | None = None

    @property
    def is_sqlite(self) -> bool:
        """True for an embedded SQLite ledger."""
        return self._engine.dialect.name == "sqlite"

    def hold(self) -> bool:
        """Keep or try to take the lock; True while this process is the leader."""
        if self.is_sqlite:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                # Not idle in a transaction: that would pin the database's oldest
                # snapshot (vacuum cannot clean up behind it) for as long as we lead.
                self._conn.commit()
                return True
            except Exception:  # the connection broke, and the lock went with it
                self._drop()
        try:
            conn = self._engine.connect()
        except Exception:
            return False
        try:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": BEAT_LEADER_LOCK_ID}
            ).scalar_one()
            conn.commit()
        except Exception:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        """Give up leadership (closing the connection releases the lock)."""
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


def _lock_connect_args(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        return {}
    # The server notices a vanished leader within about 10 + 3 * 5 = 25 seconds.
    return {
        "connect_timeout": 10,
        "application_name": "nightly-etl-beat-leader",
        "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
        "-c tcp_keepalives_count=3",
    }
