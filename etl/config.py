"""One typed Settings object, read from ``ETL_*`` environment variables at the edges."""

from __future__ import annotations

import ssl
from ipaddress import IPv4Address
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    IPvAnyAddress,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ETL_"
# The longest a transient failure waits before its retry (see etl.domain.retry).
MAX_RETRY_BACKOFF_S = 300
# A worker holds a message with an ETA unacknowledged until it is due, so it refuses one
# due later than the longest retry wait (plus a minute of clock skew between hosts): no
# message of ours waits longer, and a forged one must not sit in a worker until the
# broker's consumer timeout closes the channel.
MAX_ETA_AHEAD_S = MAX_RETRY_BACKOFF_S + 60


class SettingsError(Exception):
    """A setting has a bad value; the message names the environment variable."""


class Settings(BaseSettings):
    """Everything a process of nightly-etl needs to know about its surroundings."""

    # A refused value is never repeated in the error: URLs and tokens hold secrets.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    # Task results only (a plan's count, a commit's state), small and expiring: no run
    # depends on them since the ledger claims each run's commit (issue 16). The ledger,
    # not this backend, is the source of truth for a run.
    result_backend: str = "redis://127.0.0.1:6379/0"
    result_expires_s: int = Field(default=24 * 3600, ge=60)
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    # Where pipelines read from; empty means the ledger's database.
    source_database_url: str = ""
    db_pool_size: int = Field(default=5, ge=1, le=100)
    # TLS to PostgreSQL (libpq's sslmode; verify-full checks the server's name against
    # the certificate signed by database_ssl_root_cert). Empty: libpq's default.
    database_sslmode: Literal[
        "", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"
    ] = ""
    database_ssl_root_cert: str = ""

    # TLS to RabbitMQ (with an amqps:// URL, port 5671): the CA that signed the broker's
    # certificate, and a client certificate and key when the broker asks for one.
    broker_ssl_ca_file: str = ""
    broker_ssl_cert_file: str = ""
    broker_ssl_key_file: str = ""

    # Message signing (Celery's "auth" serializer): every task message is signed with
    # this key and certificate, and a worker runs only messages signed by a certificate
    # in the store (a directory or a glob of PEM files). All three, or none.
    security_key_file: str = ""
    security_certificate_file: str = ""
    security_cert_store: str = ""

    s3_bucket: str = Field(default="nightly-etl", min_length=3, max_length=63)
    s3_endpoint_url: str = ""  # empty for real AWS
    s3_region: str = "us-east-1"
    s3_prefix: str = "etl"

    api_token: SecretStr = SecretStr("")
    # Tokens that may only read (GET): for dashboards and monitoring; comma-separated.
    api_read_token: SecretStr = SecretStr("")
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # Per-task limits: the soft limit raises inside the task so it can clean up; the hard
    # limit kills the pool process. RabbitMQ's consumer timeout must stay above the hard
    # limit, or the broker closes the channel under a task that is still working.
    task_soft_time_limit_s: int = Field(default=840, ge=1)
    task_time_limit_s: int = Field(default=900, ge=2)
    worker_concurrency: int = Field(default=2, ge=1, le=64)
    # `etl worker` sends Celery's task events (what Flower shows of each task); off by
    # default, as in Celery: each task then publishes a few more small messages.
    worker_events: bool = False

    # Transient failures (lost connections, S3 5xx, timeouts) are retried this many
    # times, waiting about base * 2**attempt seconds (capped at MAX_RETRY_BACKOFF_S).
    max_retries: int = Field(default=5, ge=0, le=20)
    retry_backoff_base_s: float = Field(default=2.0, gt=0, le=60)

    # Classic queues by default; quorum queues replicate across a cluster and count
    # redeliveries, dead-lettering a message delivered more than delivery_limit times.
    queue_type: Literal["classic", "quorum"] = "classic"
    delivery_limit: int = Field(default=10, ge=1, le=1000)
    # RabbitMQ's consumer_timeout (rabbitmq.conf; 30 min by default). A worker holds a
    # message unacked while it waits out a retry countdown and then runs the task, so
    # the broker must allow longer than both together.
    rabbitmq_consumer_timeout_s: int = Field(default=1800, ge=60)
    # A plan with more chunks than this is refused before anything is recorded: a tiny
    # chunk_size on a big table would otherwise queue tens of thousands of messages
    # ahead of every other run.
    max_chunks_per_run: int = Field(default=10_000, ge=1, le=1_000_000)

    # Extra modules whose PIPELINES list is added to the registry, comma-separated
    # (e.g. "mycompany.pipelines"): how a deployment brings its own pipelines.
    pipeline_modules: str = ""
    # Directories those modules are imported from, besides the installed packages
    # (separated like PATH: ":" on Linux), so no process needs PYTHONPATH set by hand.
    pipeline_path: str = ""
    # The reconciler re-sends a run's lost plan or commit after this long without
    # progress, and fails a run still unfinished this long after it started.
    reconcile_stale_s: int = Field(default=300, ge=1)
    # Counted from when a run starts (a queued run waiting for a place has not started).
    run_deadline_s: int = Field(default=6 * 3600, ge=60)
    # A waiting Beat tries to take the lead this often, so it takes over from a dead
    # leader within about this long; the leader also re-checks its lock this often.
    beat_leader_poll_s: float = Field(default=5.0, ge=0.5, le=60)

    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$")
    # json: one event per line with run_id, chunk and task_id, for a log pipeline;
    # text: the same, human-readable, for a terminal.
    log_format: Literal["text", "json"] = "text"
    # `etl worker` serves Prometheus metrics on this port (0: off); the API serves its
    # own at /metrics.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # ...on this address. Loopback by default: the worker's metrics have no
    # authentication, so only a private network (compose's) should reach them.
    metrics_bind: IPvAnyAddress = Field(default=IPv4Address("127.0.0.1"))

    @property
    def database_ssl_args(self) -> dict[str, str]:
        """libpq connection arguments for TLS to PostgreSQL."""
        args: dict[str, str] = {}
        if self.database_sslmode:
            args["sslmode"] = self.database_sslmode
        if self.database_ssl_root_cert:
            args["sslrootcert"] = self.database_ssl_root_cert
        return args

    @property
    def broker_use_ssl(self) -> dict[str, Any] | bool:
        """Celery's broker_use_ssl: verified TLS for amqps:// URLs, off otherwise."""
        if not self.broker_url.startswith("amqps://"):
            return False
        options: dict[str, Any] = {
            "cert_reqs": ssl.CERT_REQUIRED,
            # py-amqp checks the certificate's name only when it is given the name to
            # check: without it, any certificate the CA signed, for any host, would do.
            "server_hostname": urlsplit(self.broker_url).hostname,
        }
        if self.broker_ssl_ca_file:
            options["ca_certs"] = self.broker_ssl_ca_file
        if self.broker_ssl_cert_file:
            options["certfile"] = self.broker_ssl_cert_file
        if self.broker_ssl_key_file:
            options["keyfile"] = self.broker_ssl_key_file
        return options

    @property
    def message_signing(self) -> bool:
        """Whether task messages are signed and only signed ones are run."""
        return bool(self.security_key_file)

    @field_validator("database_url", "source_database_url", "broker_url", "result_backend")
    @classmethod
    def _userinfo_is_unambiguous(cls, url: str) -> str:
        problem = ambiguous_userinfo(url)
        if problem:
            raise ValueError(problem)
        return url

    @model_validator(mode="after")
    def _signing_needs_all_three(self) -> Settings:
        given = [self.security_key_file, self.security_certificate_file, self.security_cert_store]
        if any(given) and not all(given):
            raise ValueError(
                "message signing needs ETL_SECURITY_KEY_FILE, ETL_SECURITY_CERTIFICATE_FILE "
                "and ETL_SECURITY_CERT_STORE together"
            )
        return self

    @model_validator(mode="after")
    def _tls_files_need_tls(self) -> Settings:
        if self.broker_ssl_ca_file and not self.broker_url.startswith("amqps://"):
            raise ValueError("ETL_BROKER_SSL_CA_FILE is set, but ETL_BROKER_URL is not amqps://")
        if bool(self.broker_ssl_cert_file) != bool(self.broker_ssl_key_file):
            raise ValueError("ETL_BROKER_SSL_CERT_FILE and ETL_BROKER_SSL_KEY_FILE go together")
        if self.database_ssl_root_cert and self.database_sslmode not in {
            "verify-ca",
            "verify-full",
        }:
            raise ValueError(
                "ETL_DATABASE_SSL_ROOT_CERT is set, but ETL_DATABASE_SSLMODE is not "
                "verify-ca or verify-full (the certificate would not be checked)"
            )
        return self

    @model_validator(mode="after")
    def _soft_limit_below_hard_limit(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                "ETL_TASK_SOFT_TIME_LIMIT_S must be below ETL_TASK_TIME_LIMIT_S "
                f"({self.task_soft_time_limit_s} >= {self.task_time_limit_s})"
            )
        needed = self.task_time_limit_s + MAX_ETA_AHEAD_S
        if needed >= self.rabbitmq_consumer_timeout_s:
            raise ValueError(
                "ETL_TASK_TIME_LIMIT_S plus the longest a message may wait for its ETA "
                f"({self.task_time_limit_s} + {MAX_ETA_AHEAD_S} s) must stay below "
                f"ETL_RABBITMQ_CONSUMER_TIMEOUT_S ({self.rabbitmq_consumer_timeout_s} s), or "
                "RabbitMQ closes the channel under a task that is still working"
            )
        return self

    @property
    def effective_source_database_url(self) -> str:
        """The source database URL, falling back to the ledger's."""
        return self.source_database_url or self.database_url


def ambiguous_userinfo(url: str) -> str | None:
    """Why the user name or password in ``url`` cannot be told from its host, or None.

    An '@' or '/' in a password must be percent-encoded: parsers disagree on where an
    unencoded one ends the password. SQLAlchemy ends it at the first '@', Python's
    urllib at the last, so ``postgresql://u:p@ss@db/x`` is password ``p`` on host
    ``ss@db`` to the one, and ``etl.adapters.db.redact_url`` would show ``ss`` of the
    password. The message holds no part of the URL."""
    _, separator, rest = url.partition("://")
    if not separator or rest.startswith("/"):  # no host, as in sqlite:////path@x.db
        return None
    head = rest.split("?", 1)[0].split("#", 1)[0]
    ats = head.count("@")
    if ats == 0:
        return None
    authority_end = head.find("/")
    if ats > 1 or (authority_end != -1 and authority_end < head.rfind("@")):
        return (
            "its user name or password holds an '@' or '/' that is not percent-encoded, "
            "so where the password ends is ambiguous; percent-encode it ('@' as %40, "
            "'/' as %2F: p@ss is written p%40ss)"
        )
    return None


def load_settings(**overrides: object) -> Settings:
    """Read Settings from the environment; a bad value raises SettingsError naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as ``ETL_*`` environment variables, to hand to a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env
