"""Is a service reachable? One short attempt each, for the demo, readiness and
``etl check`` (SettingsProbes: what etl.service.checks asks of a deployment)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from sqlalchemy import Engine, create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from etl.adapters.db import redact_url
from etl.adapters.ledger.schema import SCHEMA_VERSION, schema_version_table
from etl.adapters.s3 import S3PartWriter
from etl.adapters.topology import BrokerTls, all_queues, broker_connection, queue_stats
from etl.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# What HEAD answers for a bucket that does not exist (AWS, MinIO, moto).
_NO_SUCH_BUCKET = frozenset({"404", "NoSuchBucket", "NotFound"})


def broker_problem(url: str, timeout: float = 3.0, ssl: BrokerTls = False) -> str | None:
    """None if the broker accepts a connection (with these TLS options), else why not."""
    try:
        with broker_connection(url, ssl, timeout) as connection:
            connection.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def database_problem(
    url: str, timeout: float = 3.0, ssl_args: dict[str, str] | None = None
) -> str | None:
    """None if the database answers ``SELECT 1`` (over TLS with libpq's ``ssl_args``),
    else why not."""
    engine = _probe_engine(url, timeout, ssl_args)
    try:
        return _select_one_problem(engine)
    finally:
        engine.dispose()


def _probe_engine(url: str, timeout: float, ssl_args: dict[str, str] | None) -> Engine:
    args: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        args = {"connect_timeout": max(1, int(timeout)), **(ssl_args or {})}
    return create_engine(url, connect_args=args)


def ledger_schema_version(
    url: str, timeout: float = 3.0, ssl_args: dict[str, str] | None = None
) -> int | None:
    """The schema version the ledger at ``url`` was migrated to, None if it has no
    ledger schema yet; raises if the database cannot be reached. Migrates nothing."""
    engine = _probe_engine(url, timeout, ssl_args)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(schema_version_table.name):
                return None
            version = conn.execute(select(func.max(schema_version_table.c.version))).scalar()
            return int(version) if version is not None else None
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
    problems["bucket"] = bucket_problem(parts.client, parts.bucket)
    return problems


def missing_queues(broker_url: str, names: list[str], *, ssl: BrokerTls = False) -> list[str]:
    """Which of ``names`` the broker does not have (a passive declare each: creates
    nothing); raises if the broker cannot be reached."""
    present = queue_stats(broker_url, names, ssl=ssl)
    return [name for name in names if name not in present]


def bucket_exists(client: S3Client, bucket: str) -> bool:
    """True if ``bucket`` answers HEAD, False if it does not exist; raises for anything
    else (unreachable, refused credentials)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _NO_SUCH_BUCKET:
            return False
        raise
    return True


def bucket_problem(client: S3Client, bucket: str) -> str | None:
    """None if the bucket answers HEAD, else why not; a missing bucket is
    ``NoSuchBucket: ...``, so that /readyz names it."""
    try:
        if not bucket_exists(client, bucket):
            return f"NoSuchBucket: bucket {bucket!r} does not exist"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def write_probe(client: S3Client, bucket: str, prefix: str) -> str:
    """Put a small object under ``prefix`` and delete it again (what a worker needs:
    s3:PutObject and s3:DeleteObject there); its key. Raises on either refusal."""
    key = f"{prefix.strip('/')}/_etl_check/probe-{uuid.uuid4().hex}.txt".lstrip("/")
    client.put_object(Bucket=bucket, Key=key, Body=b"etl check: safe to delete\n")
    client.delete_object(Bucket=bucket, Key=key)
    return key


def probe_s3_client(endpoint_url: str, region: str, timeout: float = 3.0) -> S3Client:
    """An S3 client for probes: one attempt, short timeouts (make_s3_client's retries
    would make a missing endpoint take minutes to report)."""
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=timeout,
        read_timeout=timeout,
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


class SettingsProbes:
    """The deployment of ``settings``, probed one short attempt at a time: what
    etl.service.checks asks (its DeploymentProbes). Where each dependency is, by a
    URL with its password hidden; ``redact`` hides the passwords in any text."""

    def __init__(self, settings: Settings, timeout: float = 3.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.ledger_at = redact_url(settings.database_url)
        self.source_at = redact_url(settings.effective_source_database_url)
        self.broker_at = redact_url(settings.broker_url)
        self.backend_at = redact_url(settings.result_backend)
        self.bucket = settings.s3_bucket
        self.endpoint = settings.s3_endpoint_url
        self.prefix_at = f"s3://{settings.s3_bucket}/{settings.s3_prefix.strip('/')}/"
        self.code_schema_version = SCHEMA_VERSION
        self._client: S3Client | None = None
        self._secrets = sorted(
            {
                password
                for url in (
                    settings.database_url,
                    settings.effective_source_database_url,
                    settings.broker_url,
                    settings.result_backend,
                )
                if (password := _password(url))
            },
            key=len,
            reverse=True,
        )

    def redact(self, text: str) -> str:
        """``text`` with every configured password replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def ledger_version(self) -> int | None:
        """The ledger's schema version (None: no schema); raises if unreachable."""
        return ledger_schema_version(
            self.settings.database_url, self.timeout, self.settings.database_ssl_args
        )

    def source(self) -> str | None:
        """Why the source database does not answer, or None."""
        return database_problem(
            self.settings.effective_source_database_url,
            self.timeout,
            self.settings.database_ssl_args,
        )

    def broker(self) -> str | None:
        """Why the broker does not accept a connection, or None."""
        return broker_problem(self.settings.broker_url, self.timeout, self.settings.broker_use_ssl)

    def queue_names(self) -> list[str]:
        """Every queue of the topology (etl.adapters.topology)."""
        return [
            queue.name or ""
            for queue in all_queues(self.settings.queue_type, self.settings.delivery_limit)
        ]

    def missing_queues(self) -> list[str]:
        """The topology's queues the broker does not have."""
        return missing_queues(
            self.settings.broker_url, self.queue_names(), ssl=self.settings.broker_use_ssl
        )

    def result_backend(self) -> str | None:
        """Why the result backend does not answer, or None."""
        return result_backend_problem(self.settings.result_backend, self.timeout)

    def bucket_exists(self) -> bool:
        """False if the bucket does not exist; raises if S3 cannot tell."""
        return bucket_exists(self._s3(), self.bucket)

    def write_probe(self) -> str:
        """Put and delete a probe object under ETL_S3_PREFIX; its key."""
        return write_probe(self._s3(), self.bucket, self.settings.s3_prefix)

    def _s3(self) -> S3Client:
        if self._client is None:
            self._client = probe_s3_client(
                self.settings.s3_endpoint_url, self.settings.s3_region, self.timeout
            )
        return self._client


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:  # not a URL SQLAlchemy parses: nothing to hide in it
        return None
