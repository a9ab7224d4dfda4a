"""What a deployment needs, checked: ``etl check`` runs every check, in order, each
``ok`` or the problem and how to fix it; workers, Beat and the API run the fatal ones at
start and refuse to start on them: check_pipelines (a module that does not load), and
bucket_refusal (a bucket that does not exist; not Beat's, which writes no S3). The
probes are the adapters' (etl.adapters.probe.SettingsProbes); the choice of checks,
their order and the fixes are here."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol, TypeVar

from etl.pipelines import PIPELINES, load_pipeline_modules

logger = logging.getLogger(__name__)

Status = Literal["ok", "failed", "skipped"]
T = TypeVar("T")


@dataclass(frozen=True)
class CheckResult:
    """One check: its name, ``ok``/``failed``/``skipped``, what was found, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        """The check as one line: status, name, what was found (and the fix)."""
        text = f"{self.status:<7} {self.name:<14} {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def sentence(self) -> str:
        """The problem and its fix, for a one-line refusal."""
        return f"{self.detail}; fix: {self.fix}" if self.fix else self.detail

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


class BucketProbes(Protocol):
    """What the bucket checks ask of S3. A method raises when it cannot tell."""

    bucket: str
    endpoint: str  # empty: AWS
    prefix_at: str  # s3://bucket/prefix/

    def redact(self, text: str) -> str:
        """``text`` with the deployment's passwords hidden."""
        ...

    def bucket_exists(self) -> bool:
        """False if the bucket does not exist."""
        ...

    def write_probe(self) -> str:
        """Put and delete a probe object under the prefix; its key."""
        ...


class DeploymentProbes(BucketProbes, Protocol):
    """Everything ``etl check`` asks. Where each dependency is (URLs without their
    passwords); methods returning ``str | None`` return the problem."""

    ledger_at: str
    source_at: str
    broker_at: str
    backend_at: str
    code_schema_version: int

    def ledger_version(self) -> int | None:
        """The ledger's schema version, None if it has no schema; raises if unreachable."""
        ...

    def source(self) -> str | None: ...

    def broker(self) -> str | None: ...

    def queue_names(self) -> list[str]: ...

    def missing_queues(self) -> list[str]: ...

    def result_backend(self) -> str | None: ...


# The fixes, one place.
FIX_LEDGER_DOWN = "check ETL_DATABASE_URL (and ETL_DATABASE_SSL*) and that PostgreSQL is up"
FIX_MIGRATE = "run `etl db upgrade`"
FIX_SOURCE = (
    "check ETL_SOURCE_DATABASE_URL (empty: the ledger's database) and that the database is up"
)
FIX_BROKER = "check ETL_BROKER_URL (and ETL_BROKER_SSL_* for amqps://) and that RabbitMQ is up"
FIX_QUEUES = (
    "start `etl worker` once (it declares them), or load infra/rabbitmq/definitions.json "
    "into the broker"
)
FIX_BACKEND = "check ETL_RESULT_BACKEND and that Redis is up"
FIX_S3 = "check ETL_S3_ENDPOINT_URL, ETL_S3_REGION and the AWS credentials"
FIX_WRITE = (
    "allow these credentials s3:PutObject and s3:DeleteObject on {prefix}* "
    "(infra/minio/etl-readwrite.json), or set ETL_S3_PREFIX"
)
FIX_MODULES = "fix the module, or ETL_PIPELINE_MODULES and ETL_PIPELINE_PATH (where it is found)"


def run_checks(probes: DeploymentProbes, modules: str, path: str) -> list[CheckResult]:
    """Every check a deployment needs, in order: the ledger (reachable, migrated), the
    source database, the broker and its queues, the result backend, the bucket (exists,
    the prefix writable), the pipeline modules. Migrates, declares and creates nothing."""
    broker = check_broker(probes)
    return [
        check_ledger(probes),
        check_source(probes),
        broker,
        check_queues(probes) if broker.ok else _skipped("queues", "the broker is unreachable"),
        check_result_backend(probes),
        check_bucket(probes),
        check_pipelines(modules, path),
    ]


def check_ledger(probes: DeploymentProbes) -> CheckResult:
    """Reachable, and at the schema version of this code."""
    version, problem = _attempt(probes, probes.ledger_version)
    where, wanted = probes.ledger_at, probes.code_schema_version
    if problem is not None:
        return _failed("ledger", f"{where}: {problem}", FIX_LEDGER_DOWN)
    if version is None:
        return _failed("ledger", f"{where} has no ledger schema yet", FIX_MIGRATE)
    if version < wanted:
        detail = f"{where} is at schema version {version}, this code needs {wanted}"
        return _failed("ledger", detail, FIX_MIGRATE)
    if version > wanted:
        return _failed(
            "ledger",
            f"{where} is at schema version {version}, newer than this code ({wanted})",
            "run the release that migrated it (or a newer one)",
        )
    return CheckResult("ledger", "ok", f"{where} at schema version {version}")


def check_source(probes: DeploymentProbes) -> CheckResult:
    """The database the pipelines read answers."""
    return _reachable("source", probes.source_at, probes, probes.source, FIX_SOURCE)


def check_broker(probes: DeploymentProbes) -> CheckResult:
    """RabbitMQ accepts a connection."""
    return _reachable("broker", probes.broker_at, probes, probes.broker, FIX_BROKER)


def check_queues(probes: DeploymentProbes) -> CheckResult:
    """Every queue of the topology exists (work queues, their DLQs, etl.unroutable)."""
    missing, problem = _attempt(probes, probes.missing_queues)
    if problem is not None:
        return _failed("queues", problem, FIX_BROKER)
    if missing:
        return _failed("queues", f"missing: {', '.join(missing)}", FIX_QUEUES)
    return CheckResult("queues", "ok", f"all {len(probes.queue_names())} declared")


def check_result_backend(probes: DeploymentProbes) -> CheckResult:
    """The result backend answers (Redis: PING)."""
    return _reachable(
        "result-backend", probes.backend_at, probes, probes.result_backend, FIX_BACKEND
    )


def check_bucket(probes: BucketProbes) -> CheckResult:
    """The bucket exists, and a probe object can be put and deleted under the prefix."""
    missing = check_bucket_exists(probes)
    if missing is not None:
        return missing
    _, problem = _attempt(probes, probes.write_probe)
    if problem is not None:
        return _failed(
            "bucket",
            f"cannot write under {probes.prefix_at}: {problem}",
            FIX_WRITE.format(prefix=probes.prefix_at),
        )
    return CheckResult("bucket", "ok", f"{probes.prefix_at} is writable")


def check_bucket_exists(probes: BucketProbes) -> CheckResult | None:
    """The failed check if the bucket does not exist or S3 cannot say; None if it exists."""
    exists, problem = _attempt(probes, probes.bucket_exists)
    if problem is not None:
        return _failed(
            "bucket", f"cannot reach s3://{probes.bucket}{_at(probes)}: {problem}", FIX_S3
        )
    return None if exists else _missing_bucket(probes)


def _missing_bucket(probes: BucketProbes) -> CheckResult:
    endpoint = f" --endpoint-url {probes.endpoint}" if probes.endpoint else ""
    return _failed(
        "bucket",
        f"bucket s3://{probes.bucket}{_at(probes)} does not exist",
        f"create it (`aws s3 mb s3://{probes.bucket}{endpoint}`) or set ETL_S3_BUCKET",
    )


def _at(probes: BucketProbes) -> str:
    return f" at {probes.endpoint}" if probes.endpoint else ""


def check_pipelines(modules: str, path: str) -> CheckResult:
    """Each module of ETL_PIPELINE_MODULES imports (from ETL_PIPELINE_PATH) and holds
    valid pipelines; they join the registry. The first that does not is named."""
    names = [name.strip() for name in modules.split(",") if name.strip()]
    try:
        load_pipeline_modules("", path)  # the path's directories, before any module
    except Exception as exc:
        return _failed("pipelines", _describe(exc), FIX_MODULES)
    for module in names:
        try:
            load_pipeline_modules(module, path)
        except Exception as exc:  # anything a module's import may raise
            return _failed("pipelines", f"module {module}: {_describe(exc)}", FIX_MODULES)
    source = f"from {', '.join(names)} and built in" if names else "built in"
    return CheckResult("pipelines", "ok", f"{', '.join(sorted(PIPELINES))} ({source})")


def bucket_refusal(probes: BucketProbes, *, warn: bool = True) -> CheckResult | None:
    """The failed check if the bucket does not exist; None if it does, or if S3 cannot
    say now, which is no reason to refuse: it may be back before the first chunk (a
    warning, or with ``warn=False`` an info line, in the log). Writes nothing."""
    exists, problem = _attempt(probes, probes.bucket_exists)
    if problem is not None:
        level = logging.WARNING if warn else logging.INFO
        logger.log(level, "cannot tell whether s3://%s exists: %s", probes.bucket, problem)
        return None
    return None if exists else _missing_bucket(probes)


def _reachable(
    name: str, where: str, probes: BucketProbes, probe: Callable[[], str | None], fix: str
) -> CheckResult:
    """A probe that returns its problem (or raises one)."""
    problem, error = _attempt(probes, probe)
    if error is not None or problem is not None:
        first = (error or problem or "").strip().splitlines()[:1] or ["no answer"]
        return _failed(name, f"{where}: {probes.redact(first[0])}", fix)
    return CheckResult(name, "ok", f"{where} answers")


def _attempt(probes: BucketProbes, probe: Callable[[], T]) -> tuple[T | None, str | None]:
    try:
        return probe(), None
    except Exception as exc:
        return None, probes.redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, "failed", detail, fix)


def _skipped(name: str, why: str) -> CheckResult:
    return CheckResult(name, "skipped", f"not checked: {why}")
