"""infra/rabbitmq on the real broker: the definitions import, declare exactly the app's
topology, give each role only what it needs; rabbitmq.conf passes the broker's schema."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection, Exchange, Producer, Queue

from etl.adapters.dead_letter_queues import drain_dead_letter_queues
from etl.adapters.topology import (
    DEAD_LETTER_EXCHANGE,
    TRANSFORM_QUEUE,
    WORK_EXCHANGE,
    dead_letter_queue_name,
    declare_topology,
)
from etl.config import Settings
from etl.worker.app import TASK_PLAN_RUN, TASK_RECONCILE, make_celery

from deploy_support import (
    PROJECT_ROOT,
    RABBITMQ_CONF,
    ImportedDefinitions,
    load_compose,
)
from support import RABBITMQ_URL, rabbitmqctl, scratch_vhost, wait_until

pytestmark = pytest.mark.integration

COMPOSE_ENV = load_compose()["services"]["worker-transform"]["environment"]
QUEUE_TYPE = COMPOSE_ENV["ETL_QUEUE_TYPE"]


@pytest.fixture(scope="module")
def imported(rabbitmq_vhost: str) -> Iterator[ImportedDefinitions]:
    """The definitions with password hashes, in a vhost and under user names of their
    own; plus the worker's user as the template alone has it, without a hash."""
    definitions = ImportedDefinitions(uuid.uuid4().hex[:8])
    definitions.add_unrendered_copy("etl-worker")
    try:
        definitions.load()
        yield definitions
    finally:
        definitions.remove()


@pytest.fixture(scope="module")
def imported_topology(imported: ImportedDefinitions) -> dict[str, list[tuple[Any, ...]]]:
    """The broker's view of the vhost the definitions created, right after the import."""
    return topology(imported.vhost)


@pytest.fixture(scope="module")
def app_topology(rabbitmq_vhost: str) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """The broker's view of what `etl worker` declares (with the compose file's queue
    type) on an empty vhost."""
    with scratch_vhost(f"etl-test-app-{uuid.uuid4().hex[:8]}") as vhost:
        declare_topology(f"{RABBITMQ_URL}/{vhost}", QUEUE_TYPE)
        yield topology(vhost)


def listing(vhost: str, what: str, *columns: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        rabbitmqctl(what, "-p", vhost, *columns, "--formatter", "json")
    )
    return rows


QUEUE_COLUMNS = ("name", "durable", "auto_delete", "type")
EXCHANGE_COLUMNS = ("name", "type", "durable", "auto_delete", "internal")
BINDING_COLUMNS = (
    "source_name",
    "source_kind",
    "destination_name",
    "destination_kind",
    "routing_key",
)


def topology(vhost: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the broker reports about a vhost's exchanges, queues and bindings,
    arguments with their AMQP types (a type mismatch fails a redeclaration too)."""

    def rows(what: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
        found = listing(vhost, what, *columns, "arguments")
        return sorted(
            (*(row[c] for c in columns), sorted(tuple(a) for a in row["arguments"]))
            for row in found
        )

    return {
        "queues": rows("list_queues", QUEUE_COLUMNS),
        "exchanges": rows("list_exchanges", EXCHANGE_COLUMNS),
        "bindings": rows("list_bindings", BINDING_COLUMNS),
    }


def test_the_definitions_declare_exactly_the_topology_the_app_declares(
    imported_topology: dict[str, list[tuple[Any, ...]]],
    app_topology: dict[str, list[tuple[Any, ...]]],
) -> None:
    assert imported_topology == app_topology
    assert len(imported_topology["queues"]) == 7  # 3 work queues, 3 DLQs, etl.unroutable


def test_a_worker_declaring_its_topology_on_the_loaded_broker_changes_nothing(
    imported: ImportedDefinitions, imported_topology: dict[str, list[tuple[Any, ...]]]
) -> None:
    # What `etl worker` does before consuming: any difference would be PRECONDITION_FAILED.
    declare_topology(imported.url("etl-worker"), QUEUE_TYPE)

    assert topology(imported.vhost) == imported_topology


def log_in(url: str) -> None:
    with Connection(url, connect_timeout=10) as connection:
        connection.connect()


def test_each_user_logs_in_with_its_own_password_only(imported: ImportedDefinitions) -> None:
    for role in ("etl-admin", "etl-worker", "etl-api", "etl-beat", "etl-flower"):
        log_in(imported.url(role))
        wrong = imported.url(role).replace(imported.passwords[role], "guessed")
        with pytest.raises(AccessRefused):
            log_in(wrong)
    users = json.loads(rabbitmqctl("list_users", "--formatter", "json"))
    tags = {row["user"]: row["tags"] for row in users if row["user"] in imported.users.values()}
    assert {user for user, tag in tags.items() if "administrator" in tag} == {
        imported.users["etl-admin"]
    }


def test_a_user_imported_from_the_template_alone_cannot_log_in(
    imported: ImportedDefinitions,
) -> None:
    with pytest.raises(AccessRefused):
        log_in(imported.url("unrendered-etl-worker"))
    with pytest.raises(AccessRefused):
        log_in(imported.url("unrendered-etl-worker").replace(imported.passwords["etl-worker"], ""))


def settings_for(url: str) -> Settings:
    return Settings(broker_url=url, result_backend="redis://127.0.0.1:6379/0")


def refused(action: Callable[[], object]) -> str:
    """Run ``action``, which the broker must refuse; returns the broker's reason."""
    with pytest.raises((AccessRefused, NotAllowed)) as raised:
        action()
    return str(raised.value)


def consume_one(url: str, queue: str) -> None:
    with Connection(url, connect_timeout=10) as connection:
        Queue(queue, no_declare=True)(connection.channel()).get(no_ack=False)


def declare_queue(url: str, queue: str) -> None:
    with Connection(url, connect_timeout=10) as connection:
        Queue(queue, durable=True)(connection.channel()).declare()


def publish(url: str, exchange: Exchange, routing_key: str) -> None:
    with Connection(url, connect_timeout=10, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(
            {"x": 1}, exchange=exchange, routing_key=routing_key, serializer="json"
        )


def test_the_api_and_beat_can_send_work_but_not_take_it(imported: ImportedDefinitions) -> None:
    for role in ("etl-api", "etl-beat"):
        app = make_celery(settings_for(imported.url(role)))
        app.send_task(TASK_PLAN_RUN, args=["no-such-run"])
        app.send_task(TASK_RECONCILE)
        reason = refused(lambda role=role: consume_one(imported.url(role), TRANSFORM_QUEUE))
        assert "ACCESS_REFUSED" in reason and TRANSFORM_QUEUE in reason
        reason = refused(lambda role=role: declare_queue(imported.url(role), "etl.other"))
        assert "etl.other" in reason


def park(url: str, queue: str) -> None:
    """Publish to a work queue and reject the message, as a worker would: the broker
    dead-letters it (through etl.dlx) into the queue's DLQ."""
    publish(url, WORK_EXCHANGE, queue)
    with Connection(url, connect_timeout=10) as connection:
        work = Queue(queue, no_declare=True)(connection.channel())
        wait_until(lambda: work.get(no_ack=False), timeout_s=10, what=queue).reject(requeue=False)


def dead_letter_depth(vhost: str, queue: str) -> int:
    rows = listing(vhost, "list_queues", "name", "messages")
    return int(next(row["messages"] for row in rows if row["name"] == queue))


def test_the_api_drains_the_dead_letter_queues_and_beat_cannot(
    imported: ImportedDefinitions,
) -> None:
    park(imported.url("etl-admin"), TRANSFORM_QUEUE)
    drained: list[object] = []

    refused(lambda: drain_dead_letter_queues(imported.url("etl-beat"), drained.append))
    assert drain_dead_letter_queues(imported.url("etl-api"), drained.append) == 1
    assert len(drained) == 1


def test_the_worker_works_its_queues_and_nothing_outside_them(
    imported: ImportedDefinitions,
) -> None:
    worker = imported.url("etl-worker")
    publish(worker, WORK_EXCHANGE, TRANSFORM_QUEUE)
    consume_one(worker, TRANSFORM_QUEUE)
    consume_one(worker, dead_letter_queue_name(TRANSFORM_QUEUE))  # the reconciler drains

    assert "other.queue" in refused(lambda: declare_queue(worker, "other.queue"))


def test_no_role_can_put_a_message_into_a_dead_letter_queue_but_the_broker(
    imported: ImportedDefinitions,
) -> None:
    dlq = dead_letter_queue_name(TRANSFORM_QUEUE)
    dead_letter_exchange = Exchange(DEAD_LETTER_EXCHANGE.name, type="direct", no_declare=True)
    for role in ("etl-admin", "etl-worker", "etl-api", "etl-beat", "etl-flower"):
        url = imported.url(role)
        # etl.dlx is internal: refused to every client, whatever its permissions...
        reason = refused(lambda url=url: publish(url, dead_letter_exchange, TRANSFORM_QUEUE))
        assert "internal exchange 'etl.dlx'" in reason or "access to exchange 'etl.dlx'" in reason
        if role == "etl-admin":
            continue
        # ...and the default exchange, which reaches every queue by name, is no role's.
        reason = refused(lambda url=url: publish(url, Exchange("", type="direct"), dlq))
        assert "amq.default" in reason, reason
    assert dead_letter_depth(imported.vhost, dlq) == 0

    # The broker itself still dead-letters through it.
    park(imported.url("etl-worker"), TRANSFORM_QUEUE)
    wait_until(
        lambda: dead_letter_depth(imported.vhost, dlq) == 1, timeout_s=10, what="the dead letter"
    )
    assert drain_dead_letter_queues(imported.url("etl-worker"), lambda _: None) == 1


def test_the_worker_recreates_a_lost_work_queue_with_its_dead_letter_exchange(
    imported: ImportedDefinitions, imported_topology: dict[str, list[tuple[Any, ...]]]
) -> None:
    # Declaring a new queue with x-dead-letter-exchange needs write permission on that
    # exchange (RabbitMQ checks it on creation only): the worker keeps it, and as etl.dlx
    # is internal it lets the worker publish nothing there.
    rabbitmqctl("delete_queue", "-p", imported.vhost, TRANSFORM_QUEUE)

    declare_topology(imported.url("etl-worker"), QUEUE_TYPE)

    assert topology(imported.vhost) == imported_topology


def test_flower_cannot_touch_the_work(imported: ImportedDefinitions) -> None:
    flower = imported.url("etl-flower")

    refused(lambda: publish(flower, WORK_EXCHANGE, TRANSFORM_QUEUE))
    refused(lambda: consume_one(flower, TRANSFORM_QUEUE))


def test_no_role_may_use_another_vhost(imported: ImportedDefinitions) -> None:
    for role in ("etl-admin", "etl-worker", "etl-api", "etl-beat", "etl-flower"):
        url = imported.url(role).rsplit("/", 1)[0] + "/"
        refused(lambda url=url: declare_queue(url, "etl.plan"))


def test_the_unroutable_queue_is_capped_by_a_policy(imported: ImportedDefinitions) -> None:
    queues = {q["name"]: q for q in listing(imported.vhost, "list_queues", "name", "policy")}

    assert queues["etl.unroutable"]["policy"] == "etl-unroutable-cap"
    assert {name for name, q in queues.items() if q["policy"]} == {"etl.unroutable"}


# -- rabbitmq.conf and enabled_plugins ----------------------------------------------------


@pytest.fixture
def broker_readable_dir() -> Iterator[Path]:
    """A directory the broker's own user can read (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="etl-test-conf-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_rabbitmq_conf_passes_the_brokers_own_schema(
    rabbitmq_vhost: str, broker_readable_dir: Path
) -> None:
    # The broker checks that load_definitions names a readable file: point it at one.
    definitions = broker_readable_dir / "definitions.json"
    definitions.write_text("{}")
    definitions.chmod(0o644)
    conf = broker_readable_dir / "rabbitmq.conf"
    text = RABBITMQ_CONF.read_text()
    conf.write_text(
        re.sub(r"(?m)^load_definitions = .*$", f"load_definitions = {definitions}", text)
    )
    conf.chmod(0o644)
    priv = rabbitmqctl("eval", "code:priv_dir(rabbit).").strip().strip('"')
    schema = os.path.join(priv, "schema", "rabbit.schema")
    expression = (
        f'Schema = cuttlefish_schema:files(["{schema}"]), '
        f'Conf = cuttlefish_conf:file("{conf}"), '
        "case cuttlefish_generator:map(Schema, Conf) of "
        "  {error, Phase, Errors} -> {error, Phase, Errors}; "
        "  Config -> [{K, V} || {K, V} <- proplists:get_value(rabbit, Config), "
        "    lists:member(K, [consumer_timeout, load_definitions, loopback_users])] "
        "end."
    )

    result = rabbitmqctl("eval", expression)

    assert "error" not in result, result
    assert "{consumer_timeout,1800000}" in result
    assert str(definitions) in result


def test_the_enabled_plugins_exist_on_the_broker(rabbitmq_vhost: str) -> None:
    text = (PROJECT_ROOT / "infra/rabbitmq/enabled_plugins").read_text().strip()
    match = re.fullmatch(r"\[([a-z_,\s]+)\]\.", text)
    assert match, "enabled_plugins is an Erlang list term ending in a full stop"
    wanted = {name.strip() for name in match.group(1).split(",")}

    available = subprocess.run(
        ["rabbitmq-plugins", "list", "--minimal"], capture_output=True, text=True, check=True
    ).stdout.split()

    assert wanted == {"rabbitmq_management", "rabbitmq_prometheus"}
    assert wanted <= set(available)
