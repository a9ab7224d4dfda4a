"""Settings that must agree with RabbitMQ: the consumer timeout and the queue type."""

from __future__ import annotations

import pytest

from etl.config import MAX_ETA_AHEAD_S, SettingsError, load_settings


def test_a_hard_limit_plus_the_longest_retry_wait_past_the_consumer_timeout_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ETL_TASK_TIME_LIMIT_S", "1600")  # 1600 + 360 >= 1800 (the default)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    message = str(caught.value)
    assert "ETL_TASK_TIME_LIMIT_S" in message
    assert "ETL_RABBITMQ_CONSUMER_TIMEOUT_S" in message
    assert "1600 + 360" in message and "1800" in message
    assert len(message.splitlines()) == 1


def test_raising_the_consumer_timeout_accepts_the_longer_hard_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ETL_TASK_TIME_LIMIT_S", "1600")
    monkeypatch.setenv("ETL_RABBITMQ_CONSUMER_TIMEOUT_S", "3600")

    settings = load_settings()

    assert (settings.task_time_limit_s, settings.rabbitmq_consumer_timeout_s) == (1600, 3600)


@pytest.mark.parametrize(("hard", "accepted"), [(1439, True), (1440, False)])
def test_the_consumer_timeout_must_stay_strictly_above_the_hard_limit_plus_the_longest_eta(
    monkeypatch: pytest.MonkeyPatch, hard: int, accepted: bool
) -> None:
    assert hard + MAX_ETA_AHEAD_S in (1799, 1800)
    monkeypatch.setenv("ETL_TASK_TIME_LIMIT_S", str(hard))
    if accepted:
        assert load_settings().task_time_limit_s == hard
    else:
        with pytest.raises(SettingsError, match="ETL_RABBITMQ_CONSUMER_TIMEOUT_S"):
            load_settings()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_classic_and_quorum_queue_types_are_accepted(
    monkeypatch: pytest.MonkeyPatch, queue_type: str
) -> None:
    monkeypatch.setenv("ETL_QUEUE_TYPE", queue_type)
    assert load_settings().queue_type == queue_type


@pytest.mark.parametrize("queue_type", ["stream", "Quorum", ""])
def test_any_other_queue_type_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, queue_type: str
) -> None:
    monkeypatch.setenv("ETL_QUEUE_TYPE", queue_type)
    with pytest.raises(SettingsError, match="ETL_QUEUE_TYPE:"):
        load_settings()


def test_the_default_queue_type_is_classic() -> None:
    assert load_settings().queue_type == "classic"
