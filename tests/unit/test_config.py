from __future__ import annotations

import pytest
from pydantic import SecretStr

from etl.config import Settings, SettingsError, load_settings, settings_env


def test_defaults_point_at_the_local_services() -> None:
    settings = load_settings()
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.result_backend == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    assert settings.effective_source_database_url == settings.database_url
    assert settings.s3_bucket == "nightly-etl"
    assert settings.s3_endpoint_url == ""
    assert settings.s3_prefix == "etl"
    assert settings.api_token.get_secret_value() == ""
    assert settings.task_soft_time_limit_s < settings.task_time_limit_s
    assert settings.log_level == "INFO"


def test_environment_variables_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_BROKER_URL", "amqp://u:p@rabbit:5672/etl")
    monkeypatch.setenv("ETL_DATABASE_URL", "postgresql+psycopg2://etl@db/ledger")
    monkeypatch.setenv("ETL_SOURCE_DATABASE_URL", "postgresql+psycopg2://ro@replica/shop")
    monkeypatch.setenv("ETL_S3_BUCKET", "my-bucket")
    monkeypatch.setenv("ETL_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("ETL_S3_PREFIX", "exports")
    monkeypatch.setenv("ETL_API_TOKEN", "s3cret")
    monkeypatch.setenv("ETL_DB_POOL_SIZE", "12")
    monkeypatch.setenv("ETL_TASK_SOFT_TIME_LIMIT_S", "100")
    monkeypatch.setenv("ETL_TASK_TIME_LIMIT_S", "120")
    monkeypatch.setenv("ETL_LOG_LEVEL", "DEBUG")

    settings = load_settings()

    assert settings.broker_url == "amqp://u:p@rabbit:5672/etl"
    assert settings.database_url == "postgresql+psycopg2://etl@db/ledger"
    assert settings.effective_source_database_url == "postgresql+psycopg2://ro@replica/shop"
    assert settings.s3_bucket == "my-bucket"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_prefix == "exports"
    assert settings.api_token.get_secret_value() == "s3cret"
    assert settings.db_pool_size == 12
    assert (settings.task_soft_time_limit_s, settings.task_time_limit_s) == (100, 120)
    assert settings.log_level == "DEBUG"


def test_the_api_token_is_not_shown_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_API_TOKEN", "very-secret-token")
    assert "very-secret-token" not in repr(load_settings())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ETL_TASK_TIME_LIMIT_S", "abc"),
        ("ETL_DB_POOL_SIZE", "0"),
        ("ETL_DB_POOL_SIZE", "101"),
        ("ETL_LOG_LEVEL", "LOUD"),
        ("ETL_RESULT_EXPIRES_S", "5"),
        ("ETL_S3_BUCKET", "ab"),
        ("ETL_API_MAX_BODY_BYTES", "10"),
        ("ETL_WORKER_CONCURRENCY", "-1"),
    ],
)
def test_a_bad_value_raises_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}:" in message
    assert len(message.splitlines()) == 1


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_DB_POOL_SIZE", "0")
    monkeypatch.setenv("ETL_LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ETL_DB_POOL_SIZE" in str(caught.value)
    assert "ETL_LOG_LEVEL" in str(caught.value)


@pytest.mark.parametrize(("soft", "hard"), [("900", "900"), ("901", "900"), ("840", "600")])
def test_a_soft_time_limit_not_below_the_hard_limit_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, soft: str, hard: str
) -> None:
    monkeypatch.setenv("ETL_TASK_SOFT_TIME_LIMIT_S", soft)
    monkeypatch.setenv("ETL_TASK_TIME_LIMIT_S", hard)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "ETL_TASK_SOFT_TIME_LIMIT_S" in message
    assert "ETL_TASK_TIME_LIMIT_S" in message
    assert f"{soft} >= {hard}" in message


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_S3_BUCKET", "from-env")
    assert load_settings(s3_bucket="from-code").s3_bucket == "from-code"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.s3_bucket = "other"  # type: ignore[misc]


def test_settings_env_round_trips_through_load_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        broker_url="amqp://u:p@rabbit:5672/etl",
        result_backend="redis://cache:6379/3",
        result_expires_s=3600,
        database_url="postgresql+psycopg2://etl:pw@db/ledger",
        source_database_url="",
        db_pool_size=7,
        s3_bucket="unit-bucket",
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_prefix="exports/etl",
        api_token=SecretStr("t1,t2"),
        api_max_body_bytes=4096,
        task_soft_time_limit_s=50,
        task_time_limit_s=60,
        worker_concurrency=3,
        log_level="WARNING",
    )
    env = settings_env(original)
    assert env["ETL_API_TOKEN"] == "t1,t2"
    assert env["ETL_SOURCE_DATABASE_URL"] == ""
    for name, value in env.items():
        assert name.startswith("ETL_")
        monkeypatch.setenv(name, value)

    loaded = load_settings()

    assert loaded == original
    assert loaded.api_token.get_secret_value() == "t1,t2"


def test_settings_env_names_every_field() -> None:
    env = settings_env(load_settings())
    assert set(env) == {f"ETL_{name.upper()}" for name in Settings.model_fields}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ETL_SECURITY_KEY_FILE": "/k.pem"}, "ETL_SECURITY_CERTIFICATE_FILE"),
        ({"ETL_BROKER_SSL_CA_FILE": "/ca.pem"}, "ETL_BROKER_SSL_CA_FILE"),
        (
            {"ETL_BROKER_URL": "amqps://u:p@mq:5671//", "ETL_BROKER_SSL_CERT_FILE": "/c.pem"},
            "ETL_BROKER_SSL_KEY_FILE",
        ),
        ({"ETL_DATABASE_SSL_ROOT_CERT": "/root.pem"}, "ETL_DATABASE_SSLMODE"),
        ({"ETL_DATABASE_SSLMODE": "sometimes"}, "ETL_DATABASE_SSLMODE"),
    ],
)
def test_incomplete_tls_and_signing_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_tls_settings_become_driver_arguments() -> None:
    settings = Settings(
        broker_url="amqps://u:p@mq:5671/etl",
        broker_ssl_ca_file="/ca.pem",
        database_sslmode="verify-full",
        database_ssl_root_cert="/root.pem",
    )
    assert settings.database_ssl_args == {"sslmode": "verify-full", "sslrootcert": "/root.pem"}
    assert settings.broker_use_ssl == {
        "cert_reqs": __import__("ssl").CERT_REQUIRED,
        "server_hostname": "mq",
        "ca_certs": "/ca.pem",
    }
    assert Settings().broker_use_ssl is False and Settings().database_ssl_args == {}
    assert not Settings().message_signing
