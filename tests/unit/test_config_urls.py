"""A URL setting whose password holds an unencoded '@' (or '/') is refused when the
settings are read, in one line naming the variable and the fix, with no part of the
password in it: parsers disagree on where such a password ends, and SQLAlchemy's
redaction showed the part after the first '@'."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from etl.cli import main
from etl.config import Settings, SettingsError, ambiguous_userinfo, load_settings

URL_VARIABLES = [
    ("ETL_DATABASE_URL", "postgresql+psycopg2://etl:{password}@db.internal:5432/ledger"),
    ("ETL_SOURCE_DATABASE_URL", "postgresql+psycopg2://ro:{password}@replica/shop"),
    ("ETL_BROKER_URL", "amqp://etl:{password}@rabbit:5672/etl"),
    ("ETL_RESULT_BACKEND", "redis://:{password}@redis:6379/0"),
]
AMBIGUOUS = ["p@ss-Secr3t", "p@ss@Secr3t", "p/ss@Secr3t"]


@pytest.mark.parametrize(("variable", "template"), URL_VARIABLES)
@pytest.mark.parametrize("password", AMBIGUOUS)
def test_an_ambiguous_password_is_refused_naming_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, template: str, password: str
) -> None:
    monkeypatch.setenv(variable, template.format(password=password))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {variable}: ")
    assert "percent-encode" in message and "p%40ss" in message
    # Nothing of the password, nor of the URL around it.
    for part in ("Secr3t", "ss-", "ss@", "db.internal", "replica", "rabbit", "redis:"):
        assert part not in message


def test_the_pydantic_error_does_not_repeat_the_value_either() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(database_url="postgresql+psycopg2://u:p@ss-Secr3t@db/x")
    assert "Secr3t" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://etl:p%40ss@db:5432/ledger",  # percent-encoded
        "postgresql+psycopg2://etl:p%2Fss@db/ledger",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg2://db/ledger",
        "postgresql+psycopg2://etl:p:ss@db/ledger",  # ':' ends nothing after the user
        "postgresql+psycopg2://etl@db/ledger?options=-csearch_path%3Da@b",  # in the query
        "amqp://guest:guest@127.0.0.1:5672//",
        "sqlite:////var/lib/etl/ledger@1.db",  # a path, no host
        "sqlite:///relative.db",
        "",
    ],
)
def test_an_unambiguous_url_is_accepted(url: str) -> None:
    assert ambiguous_userinfo(url) is None


def test_the_cli_and_the_api_refuse_to_start_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", "postgresql+psycopg2://etl:p@ss-Secr3t@db/ledger")
    monkeypatch.setenv("ETL_API_TOKEN", "t")
    for argv in (["api"], ["status", "some-run"], ["db", "upgrade"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "ETL_DATABASE_URL" in err and "p%40ss" in err
        assert "Secr3t" not in err and "ss-" not in err
