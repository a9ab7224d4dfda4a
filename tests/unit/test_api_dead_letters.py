"""The HTTP API's dead-letter routes, as far as they go without a broker: tokens and
query validation (listing syncs from the broker: the integration suite covers it)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from builders import auth, field_names


def test_listing_dead_letters_without_a_token_is_a_401(client: FlaskClient) -> None:
    response = client.get("/api/v1/dead-letters")
    assert response.status_code == 401
    assert "token" in response.get_json()["error"]


def test_replaying_a_dead_letter_without_a_token_is_a_401(client: FlaskClient) -> None:
    response = client.post("/api/v1/dead-letters/1/replay")
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("query", "fields"),
    [("colour=blue", ["colour"]), ("state=dead&limit=5", ["limit", "state"]), ("all=yes", ["all"])],
)
def test_bad_dead_letter_queries_are_a_400_naming_the_field(
    client: FlaskClient, query: str, fields: list[str]
) -> None:
    response = client.get(f"/api/v1/dead-letters?{query}", headers=auth())
    assert response.status_code == 400
    assert sorted(field_names(response)) == fields
