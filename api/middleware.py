"""What wraps the Flask app at the WSGI level: security headers on every response, and a
chunked request body held to the same limit as one with a Content-Length."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

# Every response, the dashboard's pages included. The pages are server-rendered HTML with
# one inline <style> block and inline style attributes (the timeline's bars), no script,
# no font, no image but the browser's own favicon request; the JSON routes load nothing.
# So nothing may run, nothing may be fetched but from this origin, and no other site may
# frame a page (clickjacking) or receive a form. Inline styles cannot run code; a page
# that adds a script must add it here (and a test will say so: tests/unit/
# test_api_security_headers.py checks the dashboard's pages against this policy).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Set in the environ when a chunked body went over the limit; the app answers 413 once
# the request is authenticated (api.create_app), as it does for a Content-Length.
BODY_TOO_LARGE = "etl.body_too_large"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response of ``app`` (replacing any it set)."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self._lower = {name.lower() for name in SECURITY_HEADERS}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            kept = [(name, value) for name, value in headers if name.lower() not in self._lower]
            return start_response(status, [*kept, *SECURITY_HEADERS.items()], *exc_info)

        return self.app(environ, with_headers)


class ChunkedBodyLimit:
    """A chunked body read here, up to one byte past ``limit``: within
    it, handed on as a body with a Content-Length; over it, marked BODY_TOO_LARGE and
    handed on empty, the rest left unread.

    Without this, werkzeug hands the app the first ``limit`` bytes of a longer chunked
    body as if they were all of it: a 10 MB body was a 400 ("not a JSON object") instead
    of a 413."""

    def __init__(self, app: WsgiApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # A chunked body has no length of its own; a Content-Length beside it is to be
        # ignored (RFC 9112, 6.3), and gunicorn refuses the pair anyway.
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            body = environ["wsgi.input"].read(self.limit + 1)
            if len(body) > self.limit:
                environ[BODY_TOO_LARGE] = True
                body = b""
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            # werkzeug counts a chunked request as one without a length
            del environ["HTTP_TRANSFER_ENCODING"]
        return self.app(environ, start_response)
