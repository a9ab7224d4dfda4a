"""Draining the dead-letter queues into the ledger, and republishing a parked message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kombu import Producer, Queue

from etl.adapters.topology import (
    WORK_EXCHANGE,
    WORK_QUEUES,
    BrokerTls,
    broker_connection,
    dead_letter_queue_name,
)

# Headers RabbitMQ adds when it dead-letters; a replayed message starts without them.
_DEATH_HEADERS = frozenset(
    {"x-death"}
    | {
        f"x-{when}-death-{what}"
        for when in ("first", "last")
        for what in ("queue", "reason", "exchange")
    }
)


@dataclass(frozen=True)
class ParkedMessage:
    """A message taken from a dead-letter queue, with the headers made JSON-safe."""

    queue: str  # the work queue it was dead-lettered from
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    content_encoding: str | None
    message_id: str | None

    @property
    def death_reason(self) -> str | None:
        """RabbitMQ's reason: rejected, expired, delivery_limit, maxlen."""
        deaths = self.headers.get("x-death") or []
        return str(deaths[0].get("reason")) if deaths else None

    @property
    def death_count(self) -> int:
        """How many times RabbitMQ has dead-lettered it from its queue."""
        deaths = self.headers.get("x-death") or []
        return int(deaths[0].get("count", 1)) if deaths else 1


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _raw_body(message: Any) -> bytes:
    # kombu hands text bodies back as str; encoding them again gives the bytes sent.
    body = message.body
    if isinstance(body, str):
        encoding = message.content_encoding
        return body.encode(encoding if encoding not in {None, "binary"} else "utf-8")
    return bytes(body)


def drain_dead_letter_queues(
    broker_url: str, record: Callable[[ParkedMessage], None], *, ssl: BrokerTls = False
) -> int:
    """Move every message from the DLQs into ``record``; returns how many.

    A message is acknowledged only after ``record`` returns, so a crash in between
    leaves it in the queue for the next drain (``record`` must be idempotent).
    """
    drained = 0
    with broker_connection(broker_url, ssl) as connection:
        channel = connection.channel()
        for source in WORK_QUEUES:
            queue = Queue(dead_letter_queue_name(source), no_declare=True)(channel)
            while (message := queue.get(no_ack=False)) is not None:
                record(
                    ParkedMessage(
                        queue=source,
                        headers=_json_safe(dict(message.headers or {})),
                        body=_raw_body(message),
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        message_id=message.properties.get("message_id"),
                    )
                )
                message.ack()
                drained += 1
    return drained


def republish(
    broker_url: str,
    *,
    queue: str,
    body: bytes,
    headers: dict[str, Any],
    content_type: str | None,
    content_encoding: str | None,
    ssl: BrokerTls = False,
) -> None:
    """Publish a parked message's body, as it was, back to its work queue (confirmed)."""
    fresh_headers = {key: value for key, value in headers.items() if key not in _DEATH_HEADERS}
    with broker_connection(broker_url, ssl, confirm_publish=True) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange=WORK_EXCHANGE,
            routing_key=queue,
            headers=fresh_headers,
            content_type=content_type or "application/octet-stream",
            content_encoding=content_encoding or "binary",
            delivery_mode=2,
            mandatory=True,
        )
