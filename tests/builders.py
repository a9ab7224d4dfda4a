"""Builders shared by the tests: one copy of each (runs in a given state, sample rows,
services on the fakes, reading parts back, certificates, raw task messages).

The run builders take any ledger of the port (``etl.service.ports.LedgerPort``): the
in-memory ``tests.fakes.FakeLedger`` or the real ledger on SQLite or PostgreSQL.
"""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from celery.security.certificate import Certificate, FSCertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import Flask
from pydantic import SecretStr
from sqlalchemy import Engine, select

from api import ApiServices, create_app
from etl.adapters.ledger import Ledger
from etl.adapters.ledger.schema import schedule_ticks_table
from etl.adapters.sample_orders import sample_orders, seed_orders
from etl.adapters.topology import WORK_EXCHANGE
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.chunks import ChunkRange, KeySpan, pick_boundaries, plan_chunks
from etl.domain.intervals import DataInterval, Grain
from etl.domain.layout import part_key, partition_path, run_prefix
from etl.domain.runs import RunState, Trigger
from etl.domain.schema import as_carried
from etl.domain.task_messages import TASK_PLAN_RUN
from etl.domain.windows import RunWindow
from etl.formats.encoding import PartStats
from etl.pipelines import get_pipeline
from etl.pipelines.orders import ORDERS_COLUMNS
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService
from etl.service.ports import Enqueue, LedgerPort, PartStore

from fakes import FakeServices, ListSource

DAY = date(2026, 11, 1)
PIPELINE = "orders_daily"
STATS = PartStats(rows=10, bytes=100, sha256="b" * 64)

# The moves that take a new (queued) run to each state.
_PATH_TO: dict[RunState, list[RunState]] = {
    RunState.QUEUED: [],
    RunState.PLANNING: [RunState.PLANNING],
    RunState.RUNNING: [RunState.PLANNING, RunState.RUNNING],
    RunState.COMMITTING: [RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING],
    RunState.SUCCEEDED: [
        RunState.PLANNING,
        RunState.RUNNING,
        RunState.COMMITTING,
        RunState.SUCCEEDED,
    ],
    RunState.FAILED: [RunState.FAILED],
    RunState.CANCELLED: [RunState.CANCELLED],
}


def new_run(
    ledger: LedgerPort,
    *,
    pipeline: str = PIPELINE,
    day: date = DAY,
    params: dict[str, Any] | None = None,
    trigger: Trigger = Trigger.MANUAL,
    idempotency_key: str | None = None,
) -> str:
    """A queued run (a new one each call, unless ``trigger`` is SCHEDULE or the
    ``idempotency_key`` was seen before); its id."""
    run, _ = ledger.create_run(
        pipeline=pipeline,
        interval=utc_day(day),
        logical_date=day,
        trigger=trigger,
        params=params or {},
        idempotency_key=idempotency_key,
        interval_name=day.isoformat(),
    )
    return run.id


def utc_day(day: date) -> DataInterval:
    """The data interval of a daily run in UTC (a pipeline without a schedule, or one
    whose schedule is in UTC): ``day`` midnight to midnight."""
    return Grain().of_date(day)


def run_in_state(ledger: LedgerPort, state: RunState, **run_fields: Any) -> str:
    """A run moved to ``state`` by the ledger's own moves (never planned); its id."""
    run_id = new_run(ledger, **run_fields)
    for step in _PATH_TO[state]:
        assert ledger.move_run(run_id, step), f"run {run_id} did not move to {step}"
    return run_id


def dense_plan(key_min: int, key_max: int, size: int) -> list[ChunkRange]:
    """The plan of a source holding every integer key of ``key_min..key_max`` once, in
    chunks of ``size`` rows (none when key_max is below key_min)."""
    keys = list(range(key_min, key_max + 1))
    span = KeySpan(len(keys), keys[0], keys[-1]) if keys else KeySpan(0)
    return plan_chunks(span, pick_boundaries(keys, size))


def planned_run(ledger: LedgerPort, *, chunks: int = 3, done: int = 0, **run_fields: Any) -> str:
    """A running run planned into ``chunks`` chunks of 100 keys (keys 1..chunks*100),
    its first ``done`` chunks finished with STATS; its id."""
    run_id = run_in_state(ledger, RunState.PLANNING, **run_fields)
    key_max = chunks * 100 if chunks else None
    window = RunWindow(key_column="id", key_min=1 if chunks else None, key_max=key_max)
    ledger.record_plan(run_id, dense_plan(1, key_max or 0, 100), window)
    assert ledger.move_run(run_id, RunState.RUNNING)
    for index in range(done):
        finish_chunk(ledger, run_id, index)
    return run_id


def finish_chunk(ledger: LedgerPort, run_id: str, index: int) -> None:
    """Start and finish a chunk as a worker would, with STATS and no rejections."""
    assert ledger.start_chunk(run_id, index).chunk is not None
    key = f"etl/run={run_id}/part-{index:05d}.jsonl.gz"
    assert ledger.finish_chunk(
        run_id, index, s3_key=key, stats=STATS, rejected_by_reason={}
    ).recorded


def failed_planned_run(ledger: LedgerPort) -> str:
    """Three chunks: 0 done, 1 failed, 2 never started; the run failed naming chunk 1."""
    run_id = planned_run(ledger, chunks=3, done=1)
    ledger.start_chunk(run_id, 1)
    ledger.fail_chunk(run_id, 1, "ValueError: bad row")
    assert ledger.fail_run(run_id, "chunk 1 failed: ValueError: bad row")
    return run_id


# -- sources and services on the fakes -----------------------------------------------------


def sample_rows(count: int) -> list[dict[str, Any]]:
    """The demo's ``count`` orders (ids 1..count, about 2% invalid) as source rows."""
    return [dict(zip(ORDERS_COLUMNS, row, strict=True)) for row in sample_orders(count)]


def with_orders(services: Services, rows: int) -> Services:
    """``services`` whose source's orders table holds the demo's first ``rows`` orders
    (made anew)."""
    assert seed_orders(services.source_engine, rows) == rows
    return services


def fake_services(rows: int = 2000, **settings: Any) -> FakeServices:
    """Every port in memory, with ``rows`` sample orders as orders_daily's source;
    ``settings`` override the defaults (e.g. max_chunks_per_run)."""
    services = FakeServices(sources={PIPELINE: ListSource(sample_rows(rows))})
    if settings:
        services.settings = services.settings.model_copy(update=settings)
    return services


def prefix_of(services: Any, run_id: str) -> str:
    """Where a run's objects go (``services``: anything with settings and ledger)."""
    run = services.ledger.get_run(run_id)
    pipeline = get_pipeline(run.pipeline)
    partition = partition_path(pipeline.grain, run.interval)
    return run_prefix(services.settings.s3_prefix, pipeline.output_path, partition, run.id)


def chunk_key(services: Any, run_id: str, index: int) -> str:
    """The key of a chunk's part in a jsonl.gz pipeline."""
    return part_key(prefix_of(services, run_id), index, "jsonl.gz")


# -- reading outputs back ------------------------------------------------------------------


def read_json_lines_gzip(data: bytes) -> list[dict[str, Any]]:
    """Decode a whole jsonl.gz part: a record a line, lines ending in "\\n" (only: a
    value's U+2028 or U+0085 is written as it is, and str.splitlines would cut there)."""
    text = gzip.decompress(data).decode("utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def keys_under(parts: PartStore, prefix: str) -> list[str]:
    """Every key under ``prefix``, in order."""
    return [stored.key for stored in parts.list_objects(prefix)]


@dataclass(frozen=True)
class Tick:
    """One slot Beat dispatched, as recorded."""

    entry: str
    slot: datetime
    logical_date: date | None
    catch_up: bool
    dispatched_by: str
    dispatched_at: datetime


def beat_ticks(engine: Engine, entry: str) -> list[Tick]:
    """Every slot Beat dispatched for an entry, oldest first, as recorded."""
    query = (
        select(schedule_ticks_table)
        .where(schedule_ticks_table.c.entry == entry)
        .order_by(schedule_ticks_table.c.slot)
    )
    with engine.connect() as conn:
        return [
            Tick(
                entry=row["entry"],
                slot=_utc(row["slot"]),
                logical_date=row["logical_date"],
                catch_up=bool(row["catch_up"]),
                dispatched_by=row["dispatched_by"],
                dispatched_at=_utc(row["dispatched_at"]),
            )
            for row in conn.execute(query).mappings()
        ]


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the ledger writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- certificates --------------------------------------------------------------------------


def write_pem(
    folder: Path,
    name: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> tuple[Path, Path]:
    """Write ``name``.pem (the certificate) and ``name``.key (its key, unencrypted PKCS#8)
    in ``folder``; their paths, certificate first."""
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: x509.Name | None = None,
) -> x509.CertificateBuilder:
    # Valid from a few minutes ago (clocks differ a little) for a day.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


@dataclass(frozen=True)
class Authority:
    """A CA of the test's own (its certificate a PEM file) that issues server certificates."""

    certificate: Path
    key: ec.EllipticCurvePrivateKey
    folder: Path

    @classmethod
    def create(cls, folder: Path, name: str = "test broker CA") -> Authority:
        """A new self-signed CA, its files in ``folder``."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = (
            _certificate(name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_path, _ = write_pem(folder, "ca", cert, key)
        return cls(cert_path, key, folder)

    def issue(self, name: str, *alt_names: x509.GeneralName) -> tuple[Path, Path]:
        """A server certificate for ``alt_names`` signed by this CA, and its key (paths)."""
        issuer = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _certificate(name, key, issuer.subject)
            .add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return write_pem(self.folder, name, cert, key)


def signing_identity(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate and its key (paths, key first), as Celery's message
    signing ("auth" serializer) takes them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(name, key).sign(key, hashes.SHA256())
    cert_path, key_path = write_pem(folder, name, cert, key)
    return key_path, cert_path


@dataclass(frozen=True)
class SigningIdentities:
    """The workers' signing identity and certificate store, and a stranger's identity
    (each a (key, certificate) pair of paths)."""

    store: Path
    trusted: tuple[Path, Path]
    stranger: tuple[Path, Path]


def signing_identities(folder: Path) -> SigningIdentities:
    """The workers' identity, a store trusting it alone, and a stranger's identity."""
    store = folder / "trusted"
    store.mkdir()
    workers = signing_identity(folder, "etl-workers")
    (store / "etl-workers.pem").write_bytes(workers[1].read_bytes())
    return SigningIdentities(store, workers, signing_identity(folder, "stranger"))


def signed(identity: tuple[Path, Path], body: bytes, store: Path | None = None) -> bytes:
    """A JSON task ``body`` signed by ``identity`` as Celery's "auth" serializer signs it
    (``store``: where the signer's certificate is looked up; its own file by default)."""
    key, cert = identity
    signer = SecureSerializer(
        PrivateKey(key.read_text()),
        Certificate(cert.read_text()),
        FSCertStore(str(store or cert)),
        "sha256",
    )
    signed_body: bytes = signer.serialize(json.loads(body))
    return signed_body


def tampered(body: bytes, old: str, new: str) -> bytes:
    """The same signature over a body in which ``old`` was swapped for ``new``: what an
    attacker on the wire could try."""
    raw = base64.b64decode(body)
    assert old.encode() in raw, f"{old!r} is not in the signed body"
    return base64.b64encode(raw.replace(old.encode(), new.encode()))


# -- raw task messages ---------------------------------------------------------------------

# The header a test names its raw message by, so its dead letter can be found.
CASE_HEADER = "x-test-case"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_headers(
    task: Any = TASK_PLAN_RUN, case: str | None = None, **changes: Any
) -> dict[str, Any]:
    """Celery protocol 2 headers of a task message, as any publisher could write them,
    named ``case`` (in CASE_HEADER) if given; ``changes`` override a header, or drop it
    where the value is ``...``."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": str(uuid.uuid4()),
        "retries": 0,
        "timelimit": [None, None],
        "root_id": None,
        "parent_id": None,
        "group": None,
        "eta": None,
        "expires": None,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "attacker",
    }
    if case is not None:
        headers[CASE_HEADER] = case
    headers.update(changes)
    return {key: value for key, value in headers.items() if value is not ...}


def task_body(*args: Any, kwargs: dict[str, Any] | None = None) -> bytes:
    """A protocol 2 JSON body: positional ``args``, ``kwargs``, no callbacks."""
    return json.dumps([list(args), kwargs or {}, EMBED]).encode()


def death(queue: str, reason: str = "rejected", **changes: Any) -> dict[str, Any]:
    """An x-death entry shaped as RabbitMQ writes it: a message ``reason``ed off ``queue``
    (``changes`` override a field, or drop it where the value is ``...``)."""
    entry = {
        "count": 1,
        "reason": reason,
        "queue": queue,
        "exchange": WORK_EXCHANGE.name,
        "routing-keys": [queue],
        "time": datetime.now(UTC).replace(microsecond=0),
    }
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not ...}


# -- the HTTP API --------------------------------------------------------------------------


# A request for a run that the API accepts.
GOOD_BODY = {"pipeline": "orders_daily", "logical_date": "2026-11-01"}


def api_app(
    ledger: Ledger,
    enqueue: Enqueue,
    *,
    readiness: Callable[[], dict[str, str | None]] = dict,
    **settings: Any,
) -> Flask:
    """The HTTP API on ``ledger``, sending tasks through ``enqueue``; tokens t1 and t2
    (full) and r1 (read-only) unless ``settings`` say otherwise. No broker: a dead-letter
    sync fails (the integration suite covers it)."""
    settings.setdefault("api_token", SecretStr("t1,t2"))
    settings.setdefault("api_read_token", SecretStr("r1"))
    run_service = RunService(ledger, enqueue)
    dead_letters = DeadLetterService(ledger, "amqp://guest:guest@127.0.0.1:1//", run_service)
    services = ApiServices(ledger, run_service, dead_letters, readiness=readiness)
    return create_app(Settings(**settings), services=services)


def auth(token: str = "t1", **headers: str) -> dict[str, str]:
    """Request headers with ``token`` as a bearer token, and ``headers``."""
    return {"Authorization": f"Bearer {token}", **headers}


def field_names(response: Any) -> list[str]:
    """The fields a 400 response names, in its order."""
    return [detail["field"] for detail in response.get_json()["details"]]


def as_read(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row transform's records as a reader of their part gets them: a timestamp (a
    datetime in the record) as its text in UTC ending in Z."""
    return [as_carried(record) for record in records]
