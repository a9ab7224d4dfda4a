"""How this process's broker client (kombu) reads message bodies: the content types an
``accept_content`` setting admits, and no inflating of compressed bodies."""

from __future__ import annotations

from collections.abc import Iterable

from kombu import compression
from kombu.serialization import prepare_accept_content


def accepted_content_types(accept_content: Iterable[str]) -> set[str]:
    """The MIME types Celery's ``accept_content`` (names or types) admits."""
    return set(prepare_accept_content(accept_content))


def never_inflate_bodies() -> None:
    """Make kombu refuse, rather than inflate, a body with a ``compression`` header."""
    # kombu inflates the body of a message with a 'compression' header while it builds
    # the Message, before any code of ours sees it: 200 kB of zlib became 200 MB in every
    # worker it reached. We never compress, so a worker's kombu decompresses nothing; the
    # check then refuses the message by its header.
    for content_type in compression.encoders():
        encoder, _ = compression.get_encoder(content_type)
        compression.register(encoder, _refuse_to_inflate, content_type)


def _refuse_to_inflate(body: bytes) -> bytes:
    raise ValueError("compressed task messages are refused")
