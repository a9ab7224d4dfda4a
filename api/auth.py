"""Bearer-token authentication for every route but health."""

from __future__ import annotations

import hmac

from flask import request

from api.errors import ApiError


def configured_tokens(raw: str) -> list[bytes]:
    """``ETL_API_TOKEN`` may list several comma-separated tokens, for rotation."""
    return [token.strip().encode() for token in raw.split(",") if token.strip()]


def require_bearer_token(tokens: list[bytes], read_tokens: list[bytes], *, writes: bool) -> None:
    """Raise 401 unless the request carries one of the tokens, and 403 when it carries
    a read-only token and the request would change something."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    presented_bytes = presented.strip().encode()
    # Compare against every token, in constant time, so timing reveals nothing.
    full = read_only = False
    for token in tokens:
        full |= hmac.compare_digest(presented_bytes, token)
    for token in read_tokens:
        read_only |= hmac.compare_digest(presented_bytes, token)
    if not (full or read_only):
        raise ApiError(401, "invalid bearer token")
    if writes and not full:
        raise ApiError(403, "this token is read-only: it may not change anything")
