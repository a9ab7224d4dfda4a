"""A page cursor is the client's to send, so whatever it decodes to must be refused by
name before PostgreSQL sees it: on the real ledger, every cursor that is not one of
ours is a 400 naming ``cursor``, never a 5xx (a NUL in the run id and a +23:59 offset
were 500s: PostgreSQL refuses both)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app
from etl.bootstrap import Services
from etl.config import Settings

from builders import new_run
from support import API_TOKEN

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def cursor_of(raw: str | bytes) -> str:
    """A cursor the way the API encodes one, around ``raw``."""
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.fixture(scope="module")
def app(service_settings: Settings, services: Services) -> Flask:
    return create_app(service_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def page(client: FlaskClient, cursor: str) -> tuple[int, object]:
    response = client.get("/api/v1/runs", query_string={"cursor": cursor}, headers=AUTH)
    return response.status_code, response.get_json()


REFUSED = [
    pytest.param("2026-11-01T00:00:00+00:00|run\x00id", id="a NUL in the run id"),
    pytest.param("2026-11-01T00:00:00+23:59|x", id="an offset of +23:59"),
    pytest.param("2026-11-01T00:00:00-23:59|x", id="an offset of -23:59"),
    pytest.param("9999-12-31T23:59:59-23:59|x", id="past year 9999 in UTC"),
    pytest.param("0001-01-01T00:00:00+23:59|x", id="before year 1 in UTC"),
    pytest.param("2026-11-01T00:00:00|x", id="no offset"),
    pytest.param("2026-11-01T00:00:00+00:00|", id="no run id"),
    pytest.param("2026-11-01T00:00:00+00:00", id="no separator"),
    pytest.param("2026-11-01T00:00:00+00:00|a|b", id="two separators"),
    pytest.param("2026-11-01T00:00:00+00:00|a\nb", id="a newline in the run id"),
    pytest.param("2026-11-01T00:00:00+00:00|a\x1b[31mb", id="an escape in the run id"),
    pytest.param("not a date|x", id="not a date"),
    pytest.param("2026-13-01T00:00:00+00:00|x", id="month 13"),
    pytest.param(b"\xff\xfe|x", id="not UTF-8"),
]


@pytest.mark.parametrize("raw", REFUSED)
def test_a_cursor_that_is_not_ours_is_a_400_naming_the_cursor(
    client: FlaskClient, raw: str | bytes
) -> None:
    status, body = page(client, cursor_of(raw))
    assert status == 400, body
    assert body == {
        "error": "invalid request",
        "details": [{"field": "cursor", "message": "not a page cursor"}],
    }


@pytest.mark.parametrize("cursor", ["not base64!", "A", "=" * 8, "%00"])
def test_a_cursor_that_is_not_even_base64_is_a_400_naming_the_cursor(
    client: FlaskClient, cursor: str
) -> None:
    status, body = page(client, cursor)
    assert status == 400, body
    assert [d["field"] for d in body["details"]] == ["cursor"]  # type: ignore[index]


def test_a_cursor_in_another_offset_pages_from_the_same_moment(
    client: FlaskClient, services: Services
) -> None:
    # +14:00 is a real zone (Kiribati) PostgreSQL accepts; the moment is what counts.
    run = services.ledger.get_run(new_run(services.ledger))
    later = run.created_at + timedelta(seconds=1)
    in_kiribati = later.astimezone(timezone(timedelta(hours=14)))
    status, body = page(client, cursor_of(f"{in_kiribati.isoformat()}|{run.id}"))
    assert status == 200, body
    assert run.id in [r["id"] for r in body["runs"]]  # type: ignore[index]


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80),
        st.builds(
            lambda moment, hours, minutes, run_id: (
                f"{moment.isoformat()}{'+' if hours >= 0 else '-'}"
                f"{abs(hours):02d}:{minutes:02d}|{run_id}"
            ),
            st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
            st.integers(min_value=-23, max_value=23),
            st.integers(min_value=0, max_value=59),
            st.text(max_size=40),
        ),
    )
)
def test_no_cursor_at_all_answers_a_5xx(client: FlaskClient, raw: str | bytes) -> None:
    for cursor in (cursor_of(raw), raw if isinstance(raw, str) else raw.hex()):
        if len(cursor) > 200:  # the query model's own bound: a 400 before any decoding
            continue
        status, body = page(client, cursor)
        assert status in (200, 400), (raw, status, body)


def test_a_real_cursor_still_pages(client: FlaskClient, services: Services) -> None:
    for _ in range(3):
        new_run(services.ledger)
    first = client.get("/api/v1/runs?limit=2", headers=AUTH).get_json()
    assert first["next_cursor"]
    status, second = page(client, first["next_cursor"])
    assert status == 200
    ids = [r["id"] for r in first["runs"]] + [r["id"] for r in second["runs"]]  # type: ignore[index]
    assert len(ids) == len(set(ids))
