"""Is a service reachable? One short attempt each, for the demo and readiness checks."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, text

from etl.adapters.s3 import S3PartWriter
from etl.adapters.topology import BrokerTls, broker_connection


def broker_problem(url: str, timeout: float = 3.0, ssl: BrokerTls = False) -> str | None:
    """None if the broker accepts a connection (with these TLS options), else why not."""
    try:
        with broker_connection(url, ssl, timeout) as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def database_problem(url: str, timeout: float = 3.0) -> str | None:
    """None if the database answers ``SELECT 1``, else why not."""
    args = {} if url.startswith("sqlite") else {"connect_timeout": int(timeout)}
    engine = create_engine(url, connect_args=args)
    try:
        return _select_one_problem(engine)
    finally:
        engine.dispose()


def _select_one_problem(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def result_backend_problem(url: str, timeout: float = 3.0) -> str | None:
    """None if a Redis result backend answers PING (other backends are not probed)."""
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def readiness_problems(
    ledger_engine: Engine,
    parts: S3PartWriter,
    broker_url: str,
    timeout: float = 2.0,
    broker_ssl: BrokerTls = False,
) -> dict[str, str | None]:
    """What the API needs to serve, by name: the broker, the ledger database and the
    bucket. None for a reachable one, else the problem (which may name hosts: log it,
    do not show it to strangers)."""
    problems: dict[str, str | None] = {"broker": broker_problem(broker_url, timeout, broker_ssl)}
    problems["database"] = _select_one_problem(ledger_engine)
    problems["bucket"] = parts.bucket_problem()
    return problems
