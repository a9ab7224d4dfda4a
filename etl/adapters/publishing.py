"""Publishing messages a batch at a time, each batch confirmed by the broker once.

With publisher confirms on a connection (``confirm_publish``), kombu waits for the
broker's ack after every message: a run's 10,000 chunk messages took 12-25 s that way,
one round trip each. ``ConfirmedBatches`` puts a channel of its own in confirm mode,
publishes a batch without waiting, then waits once for the broker to confirm every
message of it. A batch counts as sent only then. A batch that fails (a lost connection,
a nack, no confirm in time) is published again whole on a new connection, so a message
may reach its queue twice (every task is safe twice), never zero times unnoticed; after
the last retry the error is raised as kombu's OperationalError, as a refused publish is.

The connection serves batch after batch until ``close()``; with ``keep_open_s``, only
batches that come within that many seconds of the last one. So a worker that plans runs
back to back (a backfill, a busy hour) opens one connection, not one a run (10 to 20 ms
each here). One idle longer is closed and opened anew rather than trusted: the broker
drops a connection that sends nothing for its heartbeat timeout (60 s by default), and a
publish on a dropped one would only fail and wait to be retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from kombu import Connection, Producer
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a batch may wait for its confirms before it is published again. RabbitMQ
# confirms a persistent message once it is written; a broker that blocks publishers (a
# memory or disk alarm) confirms nothing until the alarm clears.
CONFIRM_TIMEOUT_S = 60.0


class BatchNotConfirmed(OperationalError):
    """The broker nacked a message of the batch, or did not confirm it in time."""


class ConfirmedBatches(Generic[T]):
    """Publishes batches of messages on one connection and channel of its own, waiting
    once per batch for the broker's confirms (transports without confirms, such as
    kombu's in-memory one, publish and return). ``send(producer, item)`` publishes one
    message through ``producer``; ``connect()`` returns a new, unconnected Connection
    whose channels do not wait for confirms themselves. A context manager: it closes
    its connection at the end. Not thread-safe: one thread's, or one with's."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        send: Callable[[Producer, T], Any],
        *,
        max_retries: int = 5,
        interval_start: float = 0.2,
        interval_step: float = 0.5,
        interval_max: float = 3.0,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
        keep_open_s: float | None = None,
    ) -> None:
        self._connect = connect
        self._send = send
        self._max_retries = max_retries
        self._intervals = (interval_start, interval_step, interval_max)
        self._confirm_timeout_s = confirm_timeout_s
        self._keep_open_s = keep_open_s
        self._last_used = 0.0  # time.monotonic() of the last batch confirmed
        self._connection: Connection | None = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._confirms = False
        self._published = 0  # delivery tags on this channel: 1, 2, ...
        self._unconfirmed: set[int] = set()
        self._nacked: set[int] = set()

    def __enter__(self) -> ConfirmedBatches[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def publish(self, batch: Sequence[T]) -> None:
        """Publish every item of ``batch`` and return once the broker has confirmed them
        all; raises OperationalError once the retries are spent."""
        if not batch:
            return
        idle_s = time.monotonic() - self._last_used
        if self._keep_open_s is not None and idle_s > self._keep_open_s:
            self.close()
        retries = 0
        while True:
            try:
                self._publish_once(batch)
                self._last_used = time.monotonic()
                return
            except OperationalError as exc:
                failure: Exception = exc
            except Exception as exc:
                if self._connection is None or not isinstance(exc, self._recoverable()):
                    raise
                failure = exc
            self.close()
            if retries >= self._max_retries:
                raise OperationalError(
                    f"a batch of {len(batch)} messages was not confirmed after "
                    f"{retries + 1} attempts: {failure}"
                ) from failure
            wait = min(self._intervals[0] + retries * self._intervals[1], self._intervals[2])
            retries += 1
            logger.warning(
                "publishing a batch of %d messages failed (%s); again in %.1fs (%d/%d)",
                len(batch),
                failure,
                wait,
                retries,
                self._max_retries,
            )
            time.sleep(wait)

    def close(self) -> None:
        """Close the channel and the connection (a batch's next publish opens new ones)."""
        connection, self._connection = self._connection, None
        self._channel = self._producer = None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a connection already lost has nothing left to close
                logger.debug("closing the publishing connection failed", exc_info=True)

    def _recoverable(self) -> tuple[type[BaseException], ...]:
        connection = self._connected()
        return (
            *connection.recoverable_connection_errors,
            *connection.recoverable_channel_errors,
        )

    def _connected(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("the publishing connection is not open")
        return self._connection

    def _publish_once(self, batch: Sequence[T]) -> None:
        producer = self._open()
        tags = set()
        for item in batch:
            if self._confirms:
                # Counted before it is sent: py-amqp reads the confirms that have arrived
                # while it publishes the next messages, and each must find its tag.
                self._published += 1
                tags.add(self._published)
                self._unconfirmed.add(self._published)
            self._send(producer, item)
        if not self._confirms:
            return
        deadline = time.monotonic() + self._confirm_timeout_s
        connection = self._connected()
        while self._unconfirmed & tags:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BatchNotConfirmed(
                    f"the broker confirmed {len(tags - self._unconfirmed)} of {len(tags)} "
                    f"messages within {self._confirm_timeout_s:.0f}s"
                )
            connection.drain_events(timeout=remaining)
        if self._nacked & tags:
            raise BatchNotConfirmed(
                f"the broker refused (nacked) {len(self._nacked & tags)} of {len(tags)} messages"
            )

    def _open(self) -> Producer:
        if self._producer is not None:
            return self._producer
        connection = self._connect()
        self._connection = connection
        connection.connect()
        channel = connection.channel()
        self._confirms = connection.transport.driver_type == "amqp"
        self._published = 0
        self._unconfirmed = set()
        self._nacked = set()
        if self._confirms:
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
        self._channel = channel
        self._producer = Producer(channel, auto_declare=False)
        return self._producer

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._nacked |= self._settle(delivery_tag, multiple)

    def _settle(self, delivery_tag: int, multiple: bool) -> set[int]:
        settled = (
            {tag for tag in self._unconfirmed if tag <= delivery_tag}
            if multiple
            else {delivery_tag} & self._unconfirmed
        )
        self._unconfirmed -= settled
        return settled
