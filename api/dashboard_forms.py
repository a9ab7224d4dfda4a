"""The dashboard's forms against cross-site requests.

A browser sends its cached HTTP Basic credentials with any request to the API's origin,
a form posted from another site included, so a POST to the dashboard must also prove it
comes from a page of ours:

- a cookie of the browser's own (``etl_csrf``, random, ``SameSite=Strict``, HttpOnly) and,
  in each form, a token derived from it with a key only the server has: another site can
  neither read the cookie nor compute the token, and a strict cookie is not even sent
  with a cross-site POST;
- the browser's own ``Sec-Fetch-Site`` (same-origin only) and ``Origin`` (this host), when
  it sends them, which every current browser does on a POST (``Origin: null``, which the
  API's no-referrer policy makes Chromium send, only beside ``Sec-Fetch-Site:
  same-origin``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Request
from werkzeug.wrappers import Response

CSRF_COOKIE = "etl_csrf"
CSRF_FIELD = "csrf_token"


def form_key(api_token: str) -> bytes:
    """The key the form tokens are derived with: from the API's own secret, so every
    worker of the API agrees on it without one more setting."""
    return hashlib.sha256(b"nightly-etl dashboard forms\x00" + api_token.encode()).digest()


def browser_secret(request: Request) -> str | None:
    """The browser's cookie, if it has one of the right shape."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if 20 <= len(value) <= 100 and value.isascii() else None


def new_browser_secret() -> str:
    """A fresh random value for the cookie."""
    return secrets.token_urlsafe(32)


def form_token(key: bytes, secret: str) -> str:
    """The token a form carries for the browser holding ``secret``."""
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def set_browser_secret(response: Response, secret: str, *, secure: bool) -> None:
    """Give the browser its cookie (on the dashboard's path only)."""
    response.set_cookie(
        CSRF_COOKIE, secret, path="/dashboard", httponly=True, samesite="Strict", secure=secure
    )


def cross_site_refusal(request: Request, key: bytes) -> str | None:
    """Why this POST is not from one of our pages, or None when it is."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site != "same-origin":
        return f"a {fetch_site} request may not change anything"
    origin = request.headers.get("Origin")
    # Under the API's "Referrer-Policy: no-referrer" a browser sends "Origin: null" even
    # for a form of the same origin; its Sec-Fetch-Site (which no page can set) then says.
    hidden = origin == "null" and fetch_site == "same-origin"
    if origin is not None and not hidden and origin != request.host_url.rstrip("/"):
        return "the request comes from another origin"
    secret = browser_secret(request)
    if secret is None:
        return "no form cookie: reload the page and try again"
    presented = request.form.get(CSRF_FIELD, "")
    if not hmac.compare_digest(presented.encode(), form_token(key, secret).encode()):
        return "the form's token does not match: reload the page and try again"
    return None
