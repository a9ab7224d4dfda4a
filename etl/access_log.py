"""gunicorn's access log (``etl api``) with no secret in it: every query-string value is
masked but those of the parameters the API defines.

The access line carries the request line, so a token sent as ``?token=...`` (refused:
tokens travel only in the Authorization header) would otherwise be written to the log.
The parameters whose values stay are the API's own query fields, which hold no secret;
any other parameter keeps its name and loses its value.

gunicorn imports this module (``--logger-class``) in its master process, before it forks
and a gevent worker patches the standard library: it imports nothing but the standard
library and gunicorn.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from gunicorn.glogging import Logger

MASK = "***"
# The query fields of api.models (RunListQuery, DeadLetterQuery), shown as sent
# (tests/unit/test_api_access_log.py keeps the two lists equal).
SHOWN_PARAMETERS = frozenset(
    {
        "pipeline",
        "state",
        "trigger",
        "logical_date_from",
        "logical_date_to",
        "limit",
        "cursor",
        "run_id",
        "all",
    }
)


def redact_query(query: str) -> str:
    """``query`` with the value of every parameter not in SHOWN_PARAMETERS masked."""
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:  # not name=value pairs at all: nothing in it is known to be harmless
        return MASK
    return urlencode(
        [(name, value if name in SHOWN_PARAMETERS else MASK) for name, value in pairs],
        quote_via=quote,
        safe="*",
    )


def redact_target(target: str) -> str:
    """A request target (path and query) with its query redacted."""
    path, separator, query = target.partition("?")
    return path + separator + redact_query(query) if separator else target


# Atoms (a request header, {name}i, or an environ value, {name}e) that hold credentials.
SECRET_ATOMS = frozenset(
    {
        "{authorization}i",
        "{proxy-authorization}i",
        "{cookie}i",
        "{http_authorization}e",
        "{http_proxy_authorization}e",
        "{http_cookie}e",
    }
)


class RedactingLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with every access-log atom redacted: the query string masked
    wherever it appears (``%(r)s``, ``%(q)s``, ``%({raw_uri}e)s`` ...), the Referer's
    too, and credential headers masked whole."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> Any:
        """gunicorn's access-log atoms, redacted."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        query = str(environ.get("QUERY_STRING") or "")
        referer = str(environ.get("HTTP_REFERER") or "")
        replacements = [(query, redact_query(query)), (referer, redact_target(referer))]
        for name, value in atoms.items():
            if not isinstance(value, str):
                continue
            if name.lower() in SECRET_ATOMS:
                atoms[name] = MASK
                continue
            for secret, shown in replacements:
                if secret and secret != shown:
                    value = value.replace(secret, shown)
            atoms[name] = value
        return atoms
