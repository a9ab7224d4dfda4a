"""Draining the dead-letter queues into the ledger, republishing a parked message, and
opening a signed body with the workers' certificate store."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kombu import Producer

from etl.adapters.topology import (
    WORK_EXCHANGE,
    WORK_QUEUES,
    BrokerTls,
    broker_connection,
    dead_letter_queue_name,
)
from etl.domain.dead_letters import JSON_CONTENT_TYPE, UnverifiedBody, printable, sent_headers

logger = logging.getLogger(__name__)

# The properties the worker's consumer checks besides the headers.
_CHECKED_PROPERTIES = ("correlation_id", "reply_to")


@dataclass(frozen=True)
class ParkedMessage:
    """A message taken from a dead-letter queue, as the broker gave it: nothing in it
    has been checked."""

    queue: str  # the work queue whose dead letters it is among
    headers: Any  # normally a dict; whatever a publisher put there
    body: bytes
    content_type: str | None
    content_encoding: str | None
    message_id: str | None
    properties: dict[str, Any] = field(default_factory=dict)


class KeepInQueue(Exception):
    """Raised by a drain's ``record`` to leave one message in its queue and go on."""


def _parked(source: str, message: Any) -> ParkedMessage:
    properties = message.properties or {}
    body = message.body
    if isinstance(body, str):  # decoded by a channel that auto-decodes: as it was sent
        body = body.encode("utf-8", errors="surrogateescape")
    headers = properties.get("application_headers")
    return ParkedMessage(
        queue=source,
        headers=headers if headers is not None else {},
        body=bytes(body),
        content_type=properties.get("content_type"),
        content_encoding=properties.get("content_encoding"),
        message_id=properties.get("message_id"),
        properties={name: properties[name] for name in _CHECKED_PROPERTIES if name in properties},
    )


def drain_dead_letter_queues(
    broker_url: str, record: Callable[[ParkedMessage], Any], *, ssl: BrokerTls = False
) -> int:
    """Move every message from the DLQs into ``record``; returns how many.

    A message is acknowledged only after ``record`` returns, so a crash in between
    leaves it in the queue for the next drain (``record`` must be idempotent). When
    ``record`` raises KeepInQueue the message stays in its queue and the drain goes on;
    any other exception stops the drain, and every message not yet acknowledged goes
    back to its queue.

    Messages are taken as the broker sends them (py-amqp's own basic.get): kombu's
    Message would decompress a body whose ``compression`` header asks for it (a
    decompression bomb, or an error that stops the drain), and py-amqp would decode a
    body in whatever ``content_encoding`` it names.
    """
    drained = 0
    with broker_connection(broker_url, ssl) as connection:
        channel = connection.channel()
        channel.auto_decode = False
        for source in WORK_QUEUES:
            queue = dead_letter_queue_name(source)
            while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
                try:
                    record(_parked(source, message))
                except KeepInQueue:
                    continue  # unacknowledged: back in its queue when the channel closes
                channel.basic_ack(message.delivery_tag)
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
    fresh_headers = sent_headers(headers)
    with broker_connection(broker_url, ssl, confirm_publish=True) as connection:
        # One attempt, failing at once: the dead letter stays dead for the next replay.
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
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


# -- signed bodies -------------------------------------------------------------------------

# Celery's "auth" serializer: base64 of signer, signature, content type, content encoding
# and the signed body, joined by this separator (celery.security.serialization).
_SIGNED_FIELDS_SEPARATOR = b"\x00\x01"


class SignedBodies:
    """Opens bodies signed with Celery's "auth" serializer, trusting exactly the
    certificates the workers trust (ETL_SECURITY_CERT_STORE), as the workers do: RSA-PSS
    over SHA-256 of the signed body.

    Celery's own deserializer is not used: on a bad signature it raises TypeError (it
    catches the wrong exception class), and after verifying it decodes whatever content
    type the body names. Here each failure says what it is, and only JSON is opened.
    """

    def __init__(self, cert_store: str) -> None:
        self.cert_store = cert_store
        self._store: Any = None
        self._store_problem: str | None = None

    def open(self, body: bytes) -> bytes:
        """The JSON body a signed message carries; raises UnverifiedBody saying why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        store = self._certificates()
        try:
            fields = base64.b64decode(body, validate=True).split(_SIGNED_FIELDS_SEPARATOR, 4)
            if len(fields) != 5:
                raise ValueError("too few fields")
            signer = base64.b64decode(fields[0], validate=True)
            signature = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            raise UnverifiedBody(
                "not signed: the body is not a signed message (Celery's auth format)"
            ) from None
        content_type, signed = fields[2], fields[4]
        signer_text = printable(signer.decode("utf-8", errors="replace"), 100)
        try:
            certificate = store[signer]
        except Exception:
            raise UnverifiedBody(
                f"signed by a certificate the workers do not trust: {signer_text!r}"
            ) from None
        if certificate.has_expired():
            raise UnverifiedBody(f"signed by an expired certificate: {signer_text!r}")
        digest = hashes.SHA256()
        try:
            certificate.get_pubkey().verify(
                signature,
                signed,
                padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH),
                digest,
            )
        except (InvalidSignature, ValueError, TypeError):
            raise UnverifiedBody(
                f"the signature does not verify against the certificate of {signer_text!r}: "
                "the body was changed after it was signed, or signed with another key"
            ) from None
        if content_type != JSON_CONTENT_TYPE.encode():
            shown = printable(content_type.decode("utf-8", errors="replace"), 100)
            raise UnverifiedBody(f"signed, but what it signs is {shown!r}, not JSON")
        return signed

    def _certificates(self) -> Any:
        if self._store is None and self._store_problem is None:
            from celery.security.certificate import FSCertStore

            try:
                self._store = FSCertStore(self.cert_store)
            except Exception as exc:
                self._store_problem = printable(f"{type(exc).__name__}: {exc}", 300)
                logger.error("cannot read the certificate store: %s", self._store_problem)
        if self._store is None:
            raise UnverifiedBody(
                f"cannot verify its signature: the certificate store {self.cert_store!r} "
                f"cannot be read ({self._store_problem})"
            )
        return self._store
