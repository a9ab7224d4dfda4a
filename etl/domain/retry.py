"""How long to wait before retrying a transient failure."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int, *, base: float = 2.0, cap: float = 300.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with a cap and "equal jitter": between half and all of
    ``min(cap, base * 2**attempt)``.

    The jitter spreads the retries of chunks that failed together (a database restart)
    so they do not all come back at the same instant; the fixed half keeps the wait
    growing with each attempt.
    """
    ceiling = min(cap, base * (2**attempt))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))
