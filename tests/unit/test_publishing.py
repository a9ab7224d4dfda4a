"""ConfirmedBatches (etl/adapters/publishing.py) on a fake broker connection: a batch is
sent only once the broker confirmed every message of it, and a batch that fails goes
again whole on a new connection. The real broker: tests/integration/test_dispatch.py."""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from etl.adapters import publishing
from etl.adapters.publishing import ConfirmedBatches


class FakeChannel:
    def __init__(self) -> None:
        self.events: dict[str, set[Callable[..., None]]] = defaultdict(set)
        self.confirming = False

    def confirm_select(self) -> None:
        self.confirming = True

    def confirm(self, kind: str, tag: int, multiple: bool = False) -> None:
        for callback in self.events[f"basic_{kind}"]:
            callback(tag, multiple)


class FakeTransport:
    def __init__(self, driver_type: str) -> None:
        self.driver_type = driver_type


class FakeConnection:
    """One broker connection: the messages published on it, and the confirms that the
    next drain_events delivers."""

    recoverable_connection_errors = (ConnectionError, socket.timeout)
    recoverable_channel_errors = ()

    def __init__(self, driver_type: str = "amqp") -> None:
        self.transport = FakeTransport(driver_type)
        self.channel_ = FakeChannel()
        self.published: list[Any] = []
        self.queued_confirms: list[tuple[str, int, bool]] = []
        self.released = False

    def connect(self) -> None:
        pass

    def channel(self) -> FakeChannel:
        return self.channel_

    def drain_events(self, timeout: float | None = None) -> None:
        if not self.queued_confirms:
            raise TimeoutError("no frame")  # as py-amqp: socket.timeout
        for kind, tag, multiple in self.queued_confirms:
            self.channel_.confirm(kind, tag, multiple)
        self.queued_confirms = []

    def release(self) -> None:
        self.released = True


class Broker:
    """Hands out connections; ``behave(connection, tag)`` decides each message's fate."""

    def __init__(self, behave: Callable[[FakeConnection, int], None], driver: str = "amqp"):
        self.behave = behave
        self.driver = driver
        self.connections: list[FakeConnection] = []

    def connect(self) -> FakeConnection:
        self.connections.append(FakeConnection(self.driver))
        return self.connections[-1]

    def send(self, producer: Any, item: int) -> None:
        connection = self.connections[-1]
        connection.published.append(item)
        self.behave(connection, len(connection.published))

    def batches(self, **kwargs: Any) -> ConfirmedBatches[int]:
        return ConfirmedBatches(self.connect, self.send, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing.time, "sleep", lambda _: None)


def ack_at_once(connection: FakeConnection, tag: int) -> None:
    # py-amqp reads the confirms that arrived while it publishes the next message.
    connection.channel_.confirm("ack", tag)


def test_confirms_that_arrive_while_the_batch_is_published_count() -> None:
    broker = Broker(ack_at_once)
    with broker.batches() as batches:
        batches.publish([1, 2, 3])
        batches.publish([4, 5])

    [connection] = broker.connections
    assert connection.channel_.confirming
    assert connection.published == [1, 2, 3, 4, 5]
    assert connection.released


def test_one_confirm_of_many_messages_after_the_batch_is_enough() -> None:
    def confirm_the_batch_later(connection: FakeConnection, tag: int) -> None:
        if tag == 3:
            connection.queued_confirms.append(("ack", 3, True))

    broker = Broker(confirm_the_batch_later)
    with broker.batches() as batches:
        batches.publish([1, 2, 3])

    assert broker.connections[0].published == [1, 2, 3]


def test_a_nacked_batch_goes_again_whole_on_a_new_connection() -> None:
    def nack_one_the_first_time(connection: FakeConnection, tag: int) -> None:
        nacked = len(broker.connections) == 1 and tag == 2
        connection.channel_.confirm("nack" if nacked else "ack", tag)

    broker = Broker(nack_one_the_first_time)
    with broker.batches() as batches:
        batches.publish([1, 2, 3])

    assert [c.published for c in broker.connections] == [[1, 2, 3], [1, 2, 3]]
    assert broker.connections[0].released


def test_a_batch_not_confirmed_in_time_goes_again_and_then_fails_as_a_refused_publish() -> None:
    broker = Broker(lambda connection, tag: None)  # the broker never confirms

    batches = broker.batches(max_retries=2, confirm_timeout_s=0.01)
    with pytest.raises(OperationalError, match="not confirmed after 3 attempts"), batches:
        batches.publish([1, 2])

    assert [c.published for c in broker.connections] == [[1, 2]] * 3
    assert all(c.released for c in broker.connections)


def test_a_connection_lost_mid_batch_is_opened_again_and_the_batch_sent_whole() -> None:
    def lose_the_first_connection(connection: FakeConnection, tag: int) -> None:
        if len(broker.connections) == 1 and tag == 2:
            raise ConnectionResetError("connection reset by peer")
        ack_at_once(connection, tag)

    broker = Broker(lose_the_first_connection)
    with broker.batches() as batches:
        batches.publish([1, 2, 3])

    assert [c.published for c in broker.connections] == [[1, 2], [1, 2, 3]]


def test_an_error_that_is_not_the_connections_is_raised_at_once() -> None:
    def refuse(connection: FakeConnection, tag: int) -> None:
        raise ValueError("not serializable")

    broker = Broker(refuse)
    with pytest.raises(ValueError, match="not serializable"), broker.batches() as batches:
        batches.publish([1])
    assert len(broker.connections) == 1


def test_a_transport_without_confirms_publishes_and_returns() -> None:
    broker = Broker(lambda connection, tag: None, driver="memory")
    with broker.batches() as batches:
        batches.publish([1, 2])
        batches.publish([])

    [connection] = broker.connections
    assert connection.published == [1, 2]
    assert not connection.channel_.confirming


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """publishing's time.monotonic, moved on by the test: ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr(publishing.time, "monotonic", lambda: now[0])
    return now


def test_a_kept_connection_serves_the_batches_that_come_within_its_idle_limit_and_no_later(
    clock: list[float],
) -> None:
    broker = Broker(ack_at_once)
    batches = broker.batches(keep_open_s=20.0)

    batches.publish([1])
    clock[0] += 19.9
    batches.publish([2])  # within 20 s of the last batch: the same connection
    clock[0] += 20.1
    batches.publish([3])  # idle longer: the broker may have dropped it, so a new one

    assert [c.published for c in broker.connections] == [[1, 2], [3]]
    assert broker.connections[0].released
    assert not broker.connections[1].released  # kept for the next batch


def test_without_an_idle_limit_the_connection_serves_every_batch_until_it_is_closed(
    clock: list[float],
) -> None:
    broker = Broker(ack_at_once)
    with broker.batches() as batches:
        batches.publish([1])
        clock[0] += 3600.0  # a run's dispatch is read between its batches, however long
        batches.publish([2])

    assert [c.published for c in broker.connections] == [[1, 2]]
