"""Bearer-token authentication for every route but health."""

from __future__ import annotations

import hmac

from flask import request

from api.errors import ApiError


def configured_tokens(raw: str) -> list[bytes]:
    """``ETL_API_TOKEN`` may list several comma-separated tokens, for rotation."""
    return [token.strip().encode() for token in raw.split(",") if token.strip()]


def require_bearer_token(
    tokens: list[bytes], read_tokens: list[bytes], *, writes: bool, allow_basic: bool = False
) -> bool:
    """Raise 401 unless the request carries one of the tokens, and 403 when it carries
    a read-only token and the request would change something. With ``allow_basic`` (the
    dashboard: browsers cannot add a bearer header) HTTP Basic with the token as the
    password is accepted too. Returns True for a full token (one that may write)."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if allow_basic and scheme.lower() == "basic" and request.authorization is not None:
        presented = request.authorization.password or ""
    elif scheme.lower() != "bearer":
        presented = ""
    if not presented:
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
    return full
