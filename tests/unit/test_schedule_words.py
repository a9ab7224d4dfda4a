"""A schedule in words, as the dashboard shows it."""

from __future__ import annotations

import pytest

from etl.domain.schedules import Cron, Every, Schedule, in_words


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (Cron("0 2 * * *", "Europe/Berlin"), "every day at 02:00 Europe/Berlin"),
        (Cron("30 * * * *", "UTC", interval="hour"), "every hour at minute 30 UTC"),
        (Cron("15 6 * * 1,3", "UTC"), "on Monday, Wednesday at 06:15 UTC"),
        (Cron("0 3 1 * *", "UTC"), "on day 1 at 03:00 UTC"),
        (Cron("0 */6 * * *", "UTC", interval="hour"), "cron 0 */6 * * * UTC"),
        (Every(60), "every 60 seconds"),
        (Every(7200), "every 2 hours"),
        (Every(86400), "every day"),
        (None, "manual only"),
    ],
)
def test_a_schedule_reads_as_words(schedule: Schedule | None, words: str) -> None:
    assert in_words(schedule) == words
