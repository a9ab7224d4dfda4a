"""Checks shared by the integration and e2e suites."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from etl.adapters.db import make_engine
from etl.adapters.ledger import Ledger, upgrade
from etl.bootstrap import Services
from etl.config import Settings, settings_env
from etl.domain.layout import partition_path, run_prefix, success_key
from etl.domain.runs import Run
from etl.formats.encoding import read_part
from etl.pipelines import get_pipeline
from etl.pipelines.orders import transform_orders

from builders import as_read

IN_CI = os.environ.get("CI", "").lower() == "true"
SESSION_TAG = uuid.uuid4().hex[:8]

POSTGRES_ADMIN_URL = os.environ.get(
    "ETL_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_URL = os.environ.get("ETL_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
REDIS_URL = os.environ.get("ETL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
API_TOKEN = "test-token-" + SESSION_TAG


def require_service(name: str, problem: str | None) -> None:
    """Skip (locally) or fail (in CI) when a service the test needs is unreachable."""
    if problem is None:
        return
    message = f"{name} is unreachable: {problem}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl and return its output; raises CalledProcessError on failure."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@contextmanager
def scratch_database(admin_url: str, name: str) -> Iterator[str]:
    """A new PostgreSQL database ``name`` (its URL), created through ``admin_url`` and
    dropped at the end, even on failure, whoever is still connected."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def scratch_ledger(postgres_url: str) -> Iterator[tuple[Engine, Ledger]]:
    """A migrated ledger in a PostgreSQL database of its own, beside ``postgres_url``'s
    (for a migration test that takes the schema back a version), dropped at the end."""
    admin_url = make_url(postgres_url).set(database="postgres")
    name = f"etl_ledger_{uuid.uuid4().hex[:8]}"
    with scratch_database(admin_url.render_as_string(hide_password=False), name) as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            yield engine, Ledger(engine)
        finally:
            engine.dispose()


def list_queues(vhost: str) -> dict[str, int]:
    """The queues of ``vhost``, each with how many messages it holds."""
    depths = {}
    for line in rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if count.isdigit():
            depths[name] = int(count)
    return depths


def queue_depth(vhost: str, queue: str) -> int:
    """How many messages ``queue`` of ``vhost`` holds (0 if there is no such queue)."""
    return list_queues(vhost).get(queue, 0)


@contextmanager
def scratch_vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of a test's own, open to guest, deleted afterwards even on failure."""
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


# Claims on Redis databases, in the database of the URL they are made through (0): each
# names the session using that database, so no other session uses or flushes it.
_REDIS_DB_CLAIM = "etl-test:redis-db:{db}"
_REDIS_DB_CLAIM_S = 6 * 3600  # a claim left by a killed session lapses
_RELEASE_CLAIM = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end"


@contextmanager
def scratch_redis_db(redis_url: str) -> Iterator[str]:
    """A Redis database of this session's own (its URL), for a test that flushes it:
    one empty when claimed, claimed in ``redis_url``'s database so no other session
    takes it, flushed and released at the end."""
    claims = redis.Redis.from_url(redis_url)
    in_use = claims.connection_pool.connection_kwargs.get("db", 0)
    try:
        for db in range(_redis_databases(claims) - 1, 0, -1):
            claim = _REDIS_DB_CLAIM.format(db=db)
            if db == in_use or not claims.set(claim, SESSION_TAG, nx=True, ex=_REDIS_DB_CLAIM_S):
                continue
            url = urlsplit(redis_url)._replace(path=f"/{db}").geturl()
            with redis.Redis.from_url(url) as scratch:
                if scratch.dbsize() == 0:  # nobody's data, not even a stale session's
                    try:
                        yield url
                    finally:
                        scratch.flushdb()
                        claims.eval(_RELEASE_CLAIM, 1, claim, SESSION_TAG)
                    return
            claims.eval(_RELEASE_CLAIM, 1, claim, SESSION_TAG)
        require_service("a Redis database of the session's own", "every database is in use")
    finally:
        claims.close()


def _redis_databases(client: redis.Redis) -> int:
    try:
        databases = client.config_get("databases").get("databases")
    except redis.ResponseError:  # CONFIG disabled
        databases = None
    return int(databases or 16)  # 16: Redis's default


@contextmanager
def moto_s3_server(log_path: Path) -> Iterator[str]:
    """moto's S3 server in a process of its own, on a free loopback port (its endpoint
    URL). Not a thread of the test process: unit tests start and reset moto's mocks
    there, and its in-memory state is one per process, so a reset would wipe the
    buckets the real-service tests' workers write to."""
    for _ in range(3):  # another process may take the free port before the server binds
        [port] = free_ports(1)
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if _wait_for_port(port, server, timeout_s=30):
                yield f"http://127.0.0.1:{port}"
                return
        finally:
            server.terminate()
            server.wait(timeout=10)
    raise RuntimeError(f"moto's S3 server did not start: {log_path.read_text()[-2000:]}")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.05)
    return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on the loopback interface that nothing listens on now."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:  # all bound at once, so the kernel gives distinct ports
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class RabbitMQNode:
    """A RabbitMQ node of a test's own beside the machine's broker: its own node name,
    ports and files, so stopping it disturbs no other session. Its CLI calls go
    through the machine's rabbitmqctl (same Erlang cookie), with ``-n``."""

    def __init__(self, name: str, base_dir: Path) -> None:
        self.name = f"{name}@localhost"
        self.base_dir = base_dir
        self.port, self.dist_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The AMQP URL of its default vhost, as guest (allowed over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def ctl(self, *args: str) -> str:
        """rabbitmqctl on this node."""
        return rabbitmqctl("-n", self.name, *args)

    def environment(self) -> dict[str, str]:
        """The variables that make ``rabbitmq-server`` this node and no other."""
        files = self.base_dir
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),  # else the AMQP port + 20000
            # Not the machine's rabbitmq.conf: its listener is the shared broker's port.
            "RABBITMQ_CONFIG_FILE": str(files / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(files / "advanced.config"),
            # No plugins, so no management or Prometheus port either.
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(files / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(files / "mnesia"),
            "RABBITMQ_LOG_BASE": str(files / "log"),
            "RABBITMQ_LOGS": "-",  # to the log file of the process
            "RABBITMQ_PID_FILE": str(files / "node.pid"),
        }

    def start(self, timeout_s: float = 90) -> None:
        """Start the node and wait until it serves AMQP."""
        for directory in (self.base_dir / "mnesia", self.base_dir / "log"):
            directory.mkdir(parents=True)
        (self.base_dir / "rabbitmq.conf").write_text("")
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:  # the packaged scripts run the node as the rabbitmq user
            for path in [self.base_dir, *self.base_dir.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")
        with (self.base_dir / "server.log").open("wb") as log:
            process = subprocess.Popen(
                ["rabbitmq-server"],
                env={**os.environ, **self.environment()},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.process = process
        # The AMQP listener opens last; polling the port is cheaper than the CLI.
        wait_until(
            lambda: self._accepts() or process.poll() is not None,
            timeout_s=timeout_s,
            what=f"RabbitMQ node {self.name} on port {self.port}",
        )
        if process.poll() is not None:  # e.g. not root nor rabbitmq: the scripts refuse
            last_lines = "\n".join(self.log().strip().splitlines()[-5:])
            require_service(f"RabbitMQ node {self.name}", f"it exited at start:\n{last_lines}")
        self.ctl("await_startup")

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        """What the node has printed."""
        return (self.base_dir / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop the node (the whole node, not only its app); kill it if it will not go."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("stop")
            self.process.wait(timeout=30)
        except (subprocess.SubprocessError, OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@contextmanager
def scratch_rabbitmq_node(name: str) -> Iterator[RabbitMQNode]:
    """A RabbitMQ node of a test's own (RabbitMQNode), started; stopped and its files
    removed at the end, even on failure."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        require_service("rabbitmq-server", "not on PATH (needed for a node of the test's own)")
    node = RabbitMQNode(name, Path(tempfile.mkdtemp(prefix=f"{name}-")))
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.base_dir, ignore_errors=True)


def expected_records(services: Services, pipeline_name: str) -> tuple[list[dict[str, Any]], int]:
    """The transform applied to the whole source: (records, rejected count). The fault
    pipelines of fault_pipelines.py share the orders transform, faults aside."""
    pipeline = get_pipeline(pipeline_name)
    transform = transform_orders if pipeline.source.table == "orders" else pipeline.transform
    columns = ", ".join(pipeline.source.columns)
    source = pipeline.source
    query = text(f"SELECT {columns} FROM {source.table} ORDER BY {source.key_column}")
    with services.source_engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    result = transform(rows)
    return as_read(result.records), len(result.rejections)


def assert_run_output_matches_source(services: Services, run: Run) -> dict[str, Any]:
    """Download every part through the manifest and compare the rows, in full, with the
    transformed source: same ids, no duplicates, none missing. Returns the manifest."""
    assert run.manifest_key, f"run {run.id} has no manifest ({run.state}: {run.reason})"
    manifest = json.loads(services.parts.get_bytes(run.manifest_key))
    pipeline = get_pipeline(run.pipeline)
    partition = partition_path(pipeline.grain, run.interval)
    prefix = run_prefix(services.settings.s3_prefix, pipeline.output_path, partition, run.id)
    assert services.parts.part_metadata(success_key(prefix)) is not None, "_SUCCESS is missing"
    assert manifest["run_id"] == run.id and manifest["pipeline"] == run.pipeline

    found: list[dict[str, Any]] = []
    for part in manifest["parts"]:
        data = services.parts.get_bytes(part["key"])
        assert hashlib.sha256(data).hexdigest() == part["sha256"], (
            f"sha256 differs for {part['key']}"
        )
        assert len(data) == part["bytes"]
        schema = [(c["name"], c["type"]) for c in manifest["schema"]]
        records = list(read_part(data, manifest["format"], schema))
        assert len(records) == part["rows"]
        found.extend(records)

    expected, rejected = expected_records(services, run.pipeline)
    ids = [record["order_id"] for record in found]
    # The figures, for `pytest -rP` (and a failure's captured output).
    print(
        f"rows of {run.pipeline} run {run.id}: {len(expected)} expected, {len(ids)} found "
        f"({len(ids) - len(set(ids))} duplicates) in {len(manifest['parts'])} parts; "
        f"{rejected} rejected"
    )
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicate rows in the output"
    missing = {r["order_id"] for r in expected} - set(ids)
    assert not missing, f"{len(missing)} rows missing, e.g. {sorted(missing)[:5]}"
    assert sorted(found, key=lambda r: r["order_id"]) == expected
    assert manifest["total_rows"] == len(expected) == run.rows_written
    assert manifest["rejected_rows"] == rejected == run.rows_rejected
    # Only the parts the manifest names live under the run's prefix, besides its markers.
    listed = {o.key for o in services.parts.list_objects(prefix + "/")}
    assert listed == {p["key"] for p in manifest["parts"]} | {run.manifest_key, success_key(prefix)}
    return manifest


def wait_until(
    condition: Callable[[], Any], *, timeout_s: float, what: str, poll_s: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def run_etl(
    settings: Settings, *args: str, timeout_s: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m etl <args>`` run to the end with ``settings`` (and ``env``) in its
    environment; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env={**os.environ, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class ChildProcess:
    """A subprocess of ours in its own process group, its output in a log file, always
    stopped (group and all) at the end of the test."""

    def __init__(
        self,
        argv: list[str],
        settings: Settings,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = {**os.environ, **settings_env(settings), **(extra_env or {})}
        # SIGABRT then prints every thread's stack into the log (see wait_for_exit).
        env["PYTHONFAULTHANDLER"] = "1"
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @classmethod
    def etl(
        cls, args: list[str], settings: Settings, log_path: Path, **kwargs: Any
    ) -> ChildProcess:
        """``python -m etl <args>``."""
        return cls([sys.executable, "-m", "etl", *args], settings, log_path, **kwargs)

    def alive(self) -> bool:
        """Still running."""
        return self.process.poll() is None

    def wait_for_log(self, text: str, *, timeout_s: float = 60) -> None:
        """Wait until the process has printed ``text``; fail with its log if it died first."""
        wait_until(
            lambda: text in self.log() or not self.alive(), timeout_s=timeout_s, what=repr(text)
        )
        assert self.alive(), self.log()

    def log(self) -> str:
        """What it has printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_exit(self, *, timeout_s: float) -> int:
        """Its exit code once it has ended; if it has not within ``timeout_s``, fail with
        its log and the stack of each of its threads, where it is stuck."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            raise AssertionError(
                f"still running {timeout_s}s later; its log and stacks:\n{self.log()}"
            ) from None

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM the group (a warm shutdown for a Celery worker), then SIGKILL."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


@contextmanager
def etl_workers(
    settings: Settings,
    log_dir: Path,
    count: int = 2,
    extra_env: dict[str, str] | None = None,
    concurrency: int = 1,
) -> Iterator[list[ChildProcess]]:
    """``count`` `etl worker` processes (prefork, ``concurrency`` children each) sharing
    the queues (each names its node after its pid); all ready on entry, all stopped on
    exit."""
    started: list[ChildProcess] = []
    try:
        for number in range(count):
            args = ["worker", "--concurrency", str(concurrency)]
            log = log_dir / f"worker-{number}.log"
            started.append(ChildProcess.etl(args, settings, log, extra_env=extra_env))
        for worker in started:
            worker.wait_for_log("ready.")
        yield started
    finally:
        for worker in started:
            worker.stop()


class TlsServer:
    """Accepts TLS on a loopback port with ``certificate`` and records how each handshake
    went ("ok" or the error's name). What passes it is relayed to ``relay_to`` (host,
    port) when given; otherwise it reads the client's greeting and hangs up (a stand-in
    for a broker, which it is not)."""

    def __init__(
        self, certificate: Path, key: Path, relay_to: tuple[str, int] | None = None
    ) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.relay_to = relay_to
        self.handshakes: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshakes.append(type(exc).__name__)
                raw.close()
                continue
            self.handshakes.append("ok")
            if self.relay_to is None:
                with suppress(OSError), tls:
                    tls.recv(8)  # the AMQP greeting
                continue
            upstream = socket.create_connection(self.relay_to)
            threading.Thread(target=_pump, args=(tls, upstream), daemon=True).start()
            threading.Thread(target=_pump, args=(upstream, tls), daemon=True).start()

    def close(self) -> None:
        """Stop accepting."""
        self.listener.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for end in (source, target):
        with suppress(OSError):
            end.close()


@contextmanager
def tls_server(
    certificate: Path, key: Path, relay_to: tuple[str, int] | None = None
) -> Iterator[TlsServer]:
    """A TlsServer, closed at the end."""
    server = TlsServer(certificate, key, relay_to)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def confirmed_channel(url: str) -> Iterator[Any]:
    """A pika channel with publisher confirms (a publisher independent of Celery and
    kombu); its connection closed at the end."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()


def publish_raw(
    channel: Any,
    *,
    exchange: str,
    routing_key: str,
    headers: dict[str, Any] | None,
    body: bytes,
    content_type: str = "application/json",
    expiration: str | None = None,
) -> None:
    """One persistent message exactly as given, mandatory (an unroutable one is refused)."""
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(
            headers=headers,
            content_type=content_type,
            content_encoding="utf-8",
            delivery_mode=2,
            expiration=expiration,
        ),
        mandatory=True,
    )
