"""The HTTP API against hostile or careless clients, in process: security headers on
every response (and a Content-Security-Policy the dashboard's own pages keep to), a
chunked body held to the body limit, and the access log's query strings masked."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from flask.testing import FlaskClient

from api.middleware import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from api.models import DeadLetterQuery, RunListQuery
from etl.access_log import MASK, SHOWN_PARAMETERS, RedactingLogger, redact_query
from etl.adapters.ledger import Ledger

from builders import GOOD_BODY, api_app, auth, failed_planned_run, new_run
from fakes import RecordingEnqueue

# -- security headers ----------------------------------------------------------------------

BASIC = {"Authorization": "Basic " + base64.b64encode(b"me:t1").decode()}  # the dashboard's


def _responses(client: FlaskClient, ledger: Ledger) -> dict[str, tuple[int, dict[str, str]]]:
    run_id = new_run(ledger)
    basic = BASIC
    requests = {
        "healthz": ("GET", "/healthz", {}),
        "a JSON list": ("GET", "/api/v1/runs", auth()),
        "a 401": ("GET", "/api/v1/runs", {}),
        "a 404": ("GET", "/api/v1/runs/no-such-run", auth()),
        "a 400": ("GET", "/api/v1/runs?limit=0", auth()),
        "a 405": ("DELETE", "/healthz", auth()),
        "the OpenAPI document": ("GET", "/api/v1/openapi.json", auth()),
        "the dashboard's 401": ("GET", "/dashboard/", {}),
        "the dashboard's runs": ("GET", "/dashboard/", basic),
        "a run's page": ("GET", f"/dashboard/runs/{run_id}", basic),
        "the pipelines page": ("GET", "/dashboard/pipelines", basic),
        "the dead letters page": ("GET", "/dashboard/dead-letters", basic),
    }
    answers = {}
    for name, (method, path, headers) in requests.items():
        response = client.open(path, method=method, headers=headers)
        answers[name] = (response.status_code, dict(response.headers))
    return answers


def test_every_response_carries_the_security_headers(client: FlaskClient, ledger: Ledger) -> None:
    answers = _responses(client, ledger)
    assert {name: status for name, (status, _) in answers.items()} == {
        "healthz": 200,
        "a JSON list": 200,
        "a 401": 401,
        "a 404": 404,
        "a 400": 400,
        "a 405": 405,
        "the OpenAPI document": 200,
        "the dashboard's 401": 401,
        "the dashboard's runs": 200,
        "a run's page": 200,
        "the pipelines page": 200,
        "the dead letters page": 200,
    }
    for name, (_, headers) in answers.items():
        for header, value in SECURITY_HEADERS.items():
            assert headers.get(header) == value, (name, header)
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"


def test_the_policy_runs_no_script_and_lets_no_site_frame_a_page() -> None:
    directives = dict(part.partition(" ")[::2] for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"  # so script-src, connect-src, ... too
    assert "script-src" not in directives
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert directives["form-action"] == "'self'"


class _PageResources(HTMLParser):
    """What a page would ask the browser to load or run."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.handlers: list[str] = []
        self.loads: list[tuple[str, str]] = []
        self.inline_styles = 0
        self.style_blocks = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script":
            self.scripts.append(values.get("src", "inline"))
        if tag == "style":
            self.style_blocks += 1
        if "style" in values:
            self.inline_styles += 1
        self.handlers += [name for name in values if name.startswith("on")]
        for attribute in ("src", "srcset", "data", "poster"):
            if attribute in values:
                self.loads.append((tag, values[attribute]))
        if tag == "link" and values.get("rel") != "canonical":
            self.loads.append((tag, values.get("href", "")))
        if tag == "iframe" or tag == "object" or tag == "embed":
            self.loads.append((tag, values.get("src", values.get("data", ""))))


def test_the_dashboard_pages_load_only_what_the_policy_allows(
    client: FlaskClient, ledger: Ledger
) -> None:
    run_id = new_run(ledger)
    basic = BASIC
    failed = failed_planned_run(ledger)  # its page has the Retry form (a full token)
    pages = ["/dashboard/", f"/dashboard/runs/{run_id}", "/dashboard/pipelines",
             "/dashboard/dead-letters", f"/dashboard/runs/{failed}",
             "/dashboard/pipelines/orders_daily", "/dashboard/dead-letters?all=1"]  # fmt: skip
    styled = 0
    for page in pages:
        response = client.get(page, headers=basic)
        assert response.status_code == 200, page
        found = _PageResources()
        found.feed(response.get_data(as_text=True))
        # default-src 'none': no script of any kind, no event handler, nothing framed
        # or fetched (an image from this origin would be allowed; there is none).
        assert found.scripts == [], page
        assert found.handlers == [], page
        assert [src for _, src in found.loads if not src.startswith(("/", "data:"))] == []
        assert "javascript:" not in response.get_data(as_text=True)
        styled += found.style_blocks + found.inline_styles
    # The pages do style themselves inline, which style-src 'unsafe-inline' allows.
    assert styled > 0
    assert "style-src 'self' 'unsafe-inline'" in CONTENT_SECURITY_POLICY


# -- chunked bodies ------------------------------------------------------------------------


def _chunked_post(client: FlaskClient, body: bytes) -> tuple[int, dict[str, object]]:
    response = client.post(
        "/api/v1/runs",
        input_stream=io.BytesIO(body),
        headers=auth(**{"Content-Type": "application/json", "Transfer-Encoding": "chunked"}),
    )
    return response.status_code, response.get_json()


def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_recorded(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    padding = "x" * (64 * 1024)
    status, body = _chunked_post(client, b'{"pipeline": "' + padding.encode() + b'"}')
    assert status == 413, body
    assert "exceeds" in str(body["error"])
    assert ledger.list_runs() == [] and enqueue.calls == []


def test_a_chunked_body_within_the_limit_is_read_whole(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    status, body = _chunked_post(client, json.dumps(GOOD_BODY).encode())
    assert status == 202, body
    assert [run.id for run in ledger.list_runs()] == [body["id"]]


def test_a_chunked_body_of_exactly_the_limit_is_not_refused(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    client = api_app(ledger, enqueue, api_max_body_bytes=2048).test_client()
    document = json.dumps(GOOD_BODY)
    exact = (document[:-1] + " " * (2048 - len(document)) + "}").encode()
    assert len(exact) == 2048
    assert _chunked_post(client, exact)[0] == 202
    assert _chunked_post(client, exact[:-1] + b" }")[0] == 413


def test_an_unauthenticated_chunked_body_over_the_limit_is_still_401(
    client: FlaskClient,
) -> None:
    response = client.post(
        "/api/v1/runs",
        input_stream=io.BytesIO(b"x" * 100_000),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 401


# -- the access log ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        ("", ""),
        ("token=s3cret", f"token={MASK}"),
        ("limit=5&access_token=s3cret&state=failed", f"limit=5&access_token={MASK}&state=failed"),
        ("api_key=a%20b&cursor=abc", f"api_key={MASK}&cursor=abc"),
        ("s3cret", f"s3cret={MASK}"),
        ("token=s3cret&token=other", f"token={MASK}&token={MASK}"),
    ],
)
def test_the_access_log_masks_every_query_value_but_the_apis_own(query: str, logged: str) -> None:
    assert redact_query(query) == logged
    assert "s3cret" not in redact_query(query).replace(f"s3cret={MASK}", "")


def test_the_shown_parameters_are_exactly_the_apis_query_fields() -> None:
    query_fields = set(RunListQuery.model_fields) | set(DeadLetterQuery.model_fields)
    assert query_fields == SHOWN_PARAMETERS


def test_the_gunicorn_logger_masks_the_request_line_query_and_referer() -> None:
    logger = RedactingLogger.__new__(RedactingLogger)  # atoms() needs no configuration
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/api/v1/runs?limit=1&token=s3cret",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/api/v1/runs",
        "QUERY_STRING": "limit=1&token=s3cret",
        "HTTP_REFERER": "https://example.test/x?password=s3cret",
        "REMOTE_ADDR": "127.0.0.1",
    }
    response = SimpleNamespace(status="401 UNAUTHORIZED", sent=10, headers=[])
    atoms = logger.atoms(response, SimpleNamespace(headers=[]), environ, timedelta(0))
    assert atoms["r"] == f"GET /api/v1/runs?limit=1&token={MASK} HTTP/1.1"
    assert atoms["q"] == f"limit=1&token={MASK}"
    assert atoms["f"] == f"https://example.test/x?password={MASK}"
    assert not re.search("s3cret", repr(atoms))
