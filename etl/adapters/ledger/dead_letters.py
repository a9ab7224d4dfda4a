"""Dead letters in the ledger: the record of each message the broker parked."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select, update

from etl.adapters.ledger.rows import dead_letter_from_row, insert_ignoring_conflicts
from etl.adapters.ledger.schema import dead_letters_table
from etl.domain.clock import utc_now
from etl.domain.dead_letters import DeadLetter, DeadLetterState
from etl.domain.errors import DeadLetterNotFound


class DeadLettersLedger:
    """The dead letters table: record, list, mark replayed or discarded."""

    engine: Engine

    def record_dead_letter(self, values: dict[str, Any]) -> tuple[int, bool]:
        """Record a parked message, or update the record of the same message seen before
        (it is dead again, e.g. after a replay). Returns (id, created).

        The values must fit the columns (etl.service.dead_letters bounds and cleans them); the
        body's size defaults to the body's own, as a body given here whole."""
        moment = utc_now()
        values = {"body_size": len(values["body"]), "body_sha256": None, **values}
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(dead_letters_table.c.id, dead_letters_table.c.death_count).where(
                    dead_letters_table.c.fingerprint == values["fingerprint"]
                )
            ).one_or_none()
            if existing is None:
                row = {
                    **values,
                    "state": DeadLetterState.DEAD.value,
                    "first_seen_at": moment,
                    "last_seen_at": moment,
                    "replay_count": 0,
                }
                conn.execute(insert_ignoring_conflicts(conn, dead_letters_table, row))
                new_id = conn.execute(
                    select(dead_letters_table.c.id).where(
                        dead_letters_table.c.fingerprint == values["fingerprint"]
                    )
                ).scalar_one()
                return int(new_id), True
            conn.execute(
                update(dead_letters_table)
                .where(dead_letters_table.c.id == existing.id)
                .values(
                    reason=values["reason"],
                    death_reason=values["death_reason"],
                    death_count=max(int(existing.death_count), int(values["death_count"])),
                    state=DeadLetterState.DEAD.value,
                    last_seen_at=moment,
                    headers=values["headers"],
                    body=values["body"],
                    body_size=values["body_size"],
                    body_sha256=values["body_sha256"],
                )
            )
            return int(existing.id), False

    def list_dead_letters(
        self,
        *,
        state: DeadLetterState | None = DeadLetterState.DEAD,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; by default only those still dead."""
        query = (
            select(dead_letters_table)
            .order_by(dead_letters_table.c.last_seen_at.desc())
            .limit(limit)
        )
        if state is not None:
            query = query.where(dead_letters_table.c.state == state.value)
        if run_id is not None:
            query = query.where(dead_letters_table.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [dead_letter_from_row(row) for row in conn.execute(query).mappings()]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter; raises DeadLetterNotFound (a LookupError)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(dead_letters_table).where(dead_letters_table.c.id == dead_letter_id)
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            raise DeadLetterNotFound(dead_letter_id)
        return dead_letter_from_row(row)

    def mark_dead_letter(
        self, dead_letter_id: int, to: DeadLetterState, *, replayed: bool = False
    ) -> bool:
        """Move a dead letter out of ``dead``; False if it was not dead (already handled)."""
        values: dict[str, Any] = {"state": to.value}
        if replayed:
            values["replayed_at"] = utc_now()
            values["replay_count"] = dead_letters_table.c.replay_count + 1
        return self._move_dead_letter(dead_letter_id, DeadLetterState.DEAD, values)

    def reopen_dead_letter(self, dead_letter_id: int) -> bool:
        """Put a dead letter whose replay could not be sent back to ``dead``."""
        return self._move_dead_letter(
            dead_letter_id,
            DeadLetterState.REPLAYED,
            {
                "state": DeadLetterState.DEAD.value,
                "replay_count": dead_letters_table.c.replay_count - 1,
            },
        )

    def _move_dead_letter(
        self, dead_letter_id: int, only_from: DeadLetterState, values: dict[str, Any]
    ) -> bool:
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(dead_letters_table)
                .where(
                    dead_letters_table.c.id == dead_letter_id,
                    dead_letters_table.c.state == only_from.value,
                )
                .values(values)
            ).rowcount
        return moved == 1

    def dead_letter_counts(self) -> dict[str, int]:
        """How many dead letters are in each state."""
        query = select(dead_letters_table.c.state, func.count()).group_by(
            dead_letters_table.c.state
        )
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(query)}
