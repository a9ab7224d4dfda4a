"""The hostile-message suite: what someone with publish rights on the broker can send to our
queues, sent by an independent publisher (pika, not Celery or kombu), against two real
workers on a vhost of the module's own.

After every case: both workers still serve (a real run queued behind the messages
completes), no healthy run changed state, and every message is accounted for as a dead
letter whose reason names what was wrong, listed by `etl dlq list` and the API.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pika.exceptions import ChannelClosedByBroker

from api import create_app
from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import (
    COMMIT_QUEUE,
    DEAD_LETTER_EXCHANGE,
    PLAN_QUEUE,
    TRANSFORM_QUEUE,
    WORK_EXCHANGE,
    WORK_QUEUES,
)
from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.dead_letters import DeadLetter
from etl.domain.runs import Run, RunState, Trigger
from etl.service.execution import plan_run
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import TASK_PLAN_RUN, TASK_TRANSFORM_CHUNK, celery_enqueue, make_celery

from builders import CASE_HEADER, EMBED, death, task_body, task_headers, utc_day
from support import (
    API_TOKEN,
    ChildProcess,
    confirmed_channel,
    etl_workers,
    publish_raw,
    run_etl,
    scratch_vhost,
    wait_until,
)

pytestmark = pytest.mark.e2e

ZLIB_BOMB = zlib.compress(bytes(250_000_000), 9)
# What a reason says when it could not tell what was wrong: never good enough here.
VAGUE = ("rejected by the worker", "see its log")


@pytest.fixture(scope="module")
def hostile_settings(service_settings: Settings, rabbitmq_vhost: str) -> Iterator[Settings]:
    with scratch_vhost(f"{rabbitmq_vhost}-hostile") as vhost:
        yield service_settings.model_copy(
            update={"broker_url": service_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}"}
        )


@pytest.fixture(scope="module")
def hostile_services(hostile_settings: Settings) -> Iterator[Services]:
    built = build_services(hostile_settings)
    built.parts.ensure_bucket()
    seed_orders(built.source_engine, 4_000)
    yield built
    built.close()


@pytest.fixture(scope="module")
def workers(
    hostile_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ChildProcess]]:
    """Two `etl worker` processes, one pool process each."""
    with etl_workers(hostile_settings, tmp_path_factory.mktemp("hostile-workers")) as started:
        yield started


@pytest.fixture(scope="module")
def healthy_runs(hostile_services: Services) -> dict[str, Run]:
    """Runs the hostile messages name, which must not change: one planned (chunks recorded,
    none dispatched) and one queued."""
    ledger = hostile_services.ledger
    planned, _ = ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 10, 1)),
        logical_date=date(2026, 10, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 1_000},
    )
    plan_run(hostile_services, planned.id)
    queued, _ = ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 10, 2)),
        logical_date=date(2026, 10, 2),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 1_000},
    )
    return {"planned": ledger.get_run(planned.id), "queued": ledger.get_run(queued.id)}


@dataclass
class Rig:
    """What every test here works with: the module's services and settings, its two
    workers, the healthy runs that must not change, and a confirmed pika channel."""

    services: Services
    settings: Settings
    workers: list[ChildProcess]
    healthy: dict[str, Run]
    channel: Any


@pytest.fixture(scope="module")
def rig(
    hostile_services: Services,
    hostile_settings: Settings,
    workers: list[ChildProcess],
    healthy_runs: dict[str, Run],
    channel: Any,
) -> Rig:
    return Rig(hostile_services, hostile_settings, workers, healthy_runs, channel)


@pytest.fixture(scope="module")
def channel(hostile_settings: Settings) -> Iterator[Any]:
    """A confirmed pika channel on the module's vhost."""
    with confirmed_channel(hostile_settings.broker_url) as opened:
        yield opened


def publish(
    channel: Any,
    queue: str,
    case: str,
    *,
    headers: dict[str, Any] | None,
    body: bytes,
    content_type: str = "application/json",
    exchange: str = WORK_EXCHANGE.name,
) -> None:
    """One raw message; the case name rides in a header of its own so its dead letter can
    be found whatever else the headers hold."""
    publish_raw(
        channel,
        exchange=exchange,
        routing_key=queue,
        body=body,
        headers={**(headers or {}), CASE_HEADER: case},
        content_type=content_type,
    )


def explicit_cases(run_id: str) -> list[tuple[str, dict[str, Any] | None, bytes, str, str]]:
    """(case, headers, body, content type, words its reason must hold) for one queue."""
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    cases: list[tuple[str, dict[str, Any] | None, bytes, str, str]] = [
        # 1. Headers Celery reads before dispatch, of the wrong type.
        ("task-list", {"task": ["etl.plan_run"], "id": str(uuid.uuid4())}, b'[["x"],{},{}]', "",
         "'task'"),
        ("task-dict", {"task": {"name": "etl.plan_run"}, "id": str(uuid.uuid4())},
         b'[["x"],{},{}]', "", "'task'"),
        ("id-list", task_headers(id=["1"]), task_body(run_id), "", "'id'"),
        ("root-id-dict", task_headers(root_id={"a": 1}), task_body(run_id), "", "'root_id'"),
        ("parent-id-list", task_headers(parent_id=[1]), task_body(run_id), "", "'parent_id'"),
        ("group-list", task_headers(group=["g"]), task_body(run_id), "", "'group'"),
        ("eta-garbage", task_headers(eta="tomorrow"), task_body(run_id), "", "'eta'"),
        ("eta-number", task_headers(eta=12), task_body(run_id), "", "'eta'"),
        ("expires-list", task_headers(expires=["x"]), task_body(run_id), "", "'expires'"),
        ("retries-text", task_headers(retries="3"), task_body(run_id), "", "'retries'"),
        ("timelimit-text", task_headers(timelimit="60"), task_body(run_id), "", "'timelimit'"),
        ("argsrepr-huge", task_headers(argsrepr="a" * 50_000), task_body(run_id), "",
         "'argsrepr'"),
        ("no-headers", None, task_body(run_id), "", "protocol 1"),
        # A protocol 1 message: the task name in the body. Celery would run it.
        ("protocol-1", {}, json.dumps({"task": TASK_PLAN_RUN, "id": str(uuid.uuid4()),
                                        "args": [run_id], "kwargs": {}}).encode(), "",
         "protocol 1"),
        # An ETA a month ahead: a worker would hold it until the consumer timeout.
        ("eta-far", task_headers(eta=future), task_body(run_id), "", "'eta'"),
        # 5. Arguments: run ids are UUIDs, chunk indexes bounded.
        ("run-id-37", task_headers(), task_body("r" * 37), "", "run_id"),
        ("run-id-nul", task_headers(), task_body(run_id[:-1] + "\x00"), "", "run_id"),
        ("run-id-20mb", task_headers(), task_body("r" * 20_000_000), "", "over"),
        ("chunk-index-huge", task_headers(TASK_TRANSFORM_CHUNK),
         task_body(run_id, 99_999_999_999), "", "chunk_index"),
        ("wrong-types", task_headers(TASK_TRANSFORM_CHUNK), task_body(12345, "zero"), "",
         "run_id"),
        ("wrong-count", task_headers(TASK_TRANSFORM_CHUNK), task_body(run_id), "",
         "chunk_index"),
        ("unknown-kwarg", task_headers(), task_body(run_id, kwargs={"force": True}), "",
         "force"),
        # Content the worker must never decode.
        ("pickle", task_headers(), b"\x80\x04\x95", "application/x-python-serialize",
         "application/x-python-serialize"),
        ("not-json", task_headers(), b'[["run", 0], {}, {', "", "not valid JSON"),
        ("unknown-task", task_headers("etl.drop_all_tables"), task_body(), "",
         "etl.drop_all_tables"),
        ("compressed", task_headers(compression="application/x-gzip"), task_body(run_id), "",
         "compression"),
        # 250 MB of zeros in 240 kB: kombu would inflate it before any check of ours.
        ("zlib-bomb", task_headers(compression="application/x-gzip"), ZLIB_BOMB, "",
         "compression"),
    ]  # fmt: skip
    return cases


def letters_by_case(letters: list[DeadLetter]) -> dict[str, list[DeadLetter]]:
    found: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        case = letter.headers.get(CASE_HEADER) if isinstance(letter.headers, dict) else None
        if isinstance(case, str):
            found.setdefault(case, []).append(letter)
    return found


def wait_for_letters(
    services: Services, cases: Iterable[str], *, timeout_s: float
) -> dict[str, list[DeadLetter]]:
    """The dead letters by case, once the ledger holds one for each of ``cases``."""
    wanted = set(cases)
    found: dict[str, list[DeadLetter]] = wait_until(
        lambda: (f := letters_by_case(services.dead_letters.list_letters())).keys() >= wanted and f,
        timeout_s=timeout_s,
        what=f"{len(wanted)} dead letters recorded",
    )
    return found


def assert_healthy_runs_unchanged(services: Services, runs: dict[str, Run]) -> None:
    for name, before in runs.items():
        after = services.ledger.get_run(before.id)
        assert (after.state, after.reason) == (before.state, before.reason), name
        assert all(chunk.attempts == 0 for chunk in services.ledger.get_chunks(before.id)), name


def assert_still_serving(
    services: Services, settings: Settings, workers: list[ChildProcess], day: int
) -> None:
    run, _ = RunService(services.ledger, celery_enqueue(make_celery(settings))).start_run(
        "orders_daily", interval=date(2026, 11, day), params={"chunk_size": 1_000}
    )
    assert wait_for_run(services.ledger, run.id, timeout_s=120).state is RunState.SUCCEEDED
    for worker in workers:
        assert worker.alive(), worker.log()[-3000:]


def test_hostile_headers_bodies_and_arguments_are_refused_and_dead_lettered_by_reason(
    rig: Rig,
) -> None:
    victim = rig.healthy["planned"].id
    peak_before = [peak_memory_bytes(worker) for worker in rig.workers]
    expected: dict[str, str] = {}
    for queue in WORK_QUEUES:
        for case, headers, body, content_type, words in explicit_cases(victim):
            name = f"{queue}:{case}"
            publish(rig.channel, queue, name, headers=headers, body=body,
                    content_type=content_type or "application/json")  # fmt: skip
            expected[name] = words

    assert_still_serving(rig.services, rig.settings, rig.workers, day=1)
    found = wait_for_letters(rig.services, expected.keys(), timeout_s=90)
    problems = []
    for name, words in expected.items():
        (letter,) = found[name]
        if words not in letter.reason or any(vague in letter.reason for vague in VAGUE):
            problems.append(f"{name}: {letter.reason!r} (wanted {words!r})")
    assert not problems, "\n".join(problems)
    assert_healthy_runs_unchanged(rig.services, rig.healthy)
    for worker, before in zip(rig.workers, peak_before, strict=True):
        assert "refused a task message" in worker.log()
        # The 20 MB run id and 50 kB argsrepr never reached a log line whole...
        assert len(worker.log()) < 2_000_000
        # ...and no bomb was inflated (three of 250 MB went to each queue).
        assert peak_memory_bytes(worker) - before < 100_000_000


def peak_memory_bytes(worker: ChildProcess) -> int:
    """The peak resident memory of a worker's main process (the one that consumes)."""
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def test_dead_letters_forged_straight_into_the_dead_letter_exchange_change_no_run(rig: Rig) -> None:
    queued = rig.healthy["queued"].id
    # Channels of its own (a refused publish closes one), confirmed so a refusal is seen.
    connection = pika.BlockingConnection(pika.URLParameters(rig.settings.broker_url))

    def confirmed() -> Any:
        opened = connection.channel()
        opened.confirm_delivery()
        return opened

    with pytest.raises(ChannelClosedByBroker) as refused:
        publish(confirmed(), PLAN_QUEUE, "forged-dlx", headers=task_headers(),
                body=task_body(queued), exchange=DEAD_LETTER_EXCHANGE.name)  # fmt: skip
    # The exchange is internal: no client may publish to it, so nothing is forged there.
    assert refused.value.reply_code == 403, refused.value

    # Dead letters forged straight into the DLQs, with a death record as RabbitMQ writes
    # it claiming a worker rejected them after giving up: for the queued run's plan, and
    # for the planned run's chunk and commit, none of which any worker started.
    planned = rig.healthy["planned"].id
    forgeries = {
        "forged-plan": (PLAN_QUEUE, task_headers(), task_body(queued)),
        "forged-chunk": (TRANSFORM_QUEUE, task_headers(TASK_TRANSFORM_CHUNK),
                         task_body(planned, 0)),
        "forged-commit": (COMMIT_QUEUE, task_headers("etl.commit_run"), task_body(planned)),
    }  # fmt: skip
    for case, (queue, headers, body) in forgeries.items():
        publish(confirmed(), f"{queue}.dlq", case, headers={**headers, "x-death": [death(queue)]},
                body=body, exchange="")  # fmt: skip

    wanted = set(forgeries)
    found = wait_for_letters(rig.services, wanted, timeout_s=30)
    # Recorded with the runs they name, and shown; never acted on.
    assert {case: found[case][0].run_id for case in wanted} == {
        "forged-plan": queued,
        "forged-chunk": planned,
        "forged-commit": planned,
    }
    assert_healthy_runs_unchanged(rig.services, rig.healthy)
    assert_still_serving(rig.services, rig.settings, rig.workers, day=2)
    connection.close()


# A sweep of header types and bodies: whatever a publisher puts there, the message is
# refused with a reason, and no worker stops. (pika cannot put a float in a header;
# bodies get them.)
HEADER_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
CELERY_HEADERS = ["root_id", "parent_id", "group", "group_index", "eta", "expires",
                  "retries", "timelimit", "argsrepr", "kwargsrepr", "shadow", "origin",
                  "ignore_result", "stamped_headers", "stamps", "replaced_task_nesting",
                  "run_id", "lang"]  # fmt: skip
# Tasks whose every message in the sweep has arguments no check accepts (the sweep's
# arguments are never a run id); reconcile and start_scheduled_run would be legitimate.
SWEPT_TASKS = st.sampled_from([TASK_PLAN_RUN, TASK_TRANSFORM_CHUNK, "etl.commit_run"]) | (
    HEADER_VALUES
)
BODIES = st.one_of(
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.tuples(JSON_VALUES, JSON_VALUES).map(
        lambda pair: json.dumps([pair[0], pair[1], EMBED]).encode()
    ),
    st.binary(max_size=64),
)


def test_a_sweep_of_header_types_and_bodies_never_stops_a_worker(rig: Rig) -> None:
    sent: list[str] = []

    @settings(
        max_examples=60,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        queue=st.sampled_from([PLAN_QUEUE, TRANSFORM_QUEUE, COMMIT_QUEUE]),
        task=SWEPT_TASKS,
        overrides=st.dictionaries(st.sampled_from(CELERY_HEADERS), HEADER_VALUES, max_size=4),
        body=BODIES,
    )
    def send(queue: str, task: Any, overrides: dict[str, Any], body: bytes) -> None:
        name = f"sweep-{len(sent)}"
        publish(rig.channel, queue, name, headers=task_headers(task, **overrides), body=body)
        sent.append(name)

    send()

    assert_still_serving(rig.services, rig.settings, rig.workers, day=3)
    found = wait_for_letters(rig.services, sent, timeout_s=90)
    vague = [f"{name}: {found[name][0].reason}" for name in sent
             if any(v in found[name][0].reason for v in VAGUE)]  # fmt: skip
    assert not vague, "\n".join(vague)
    assert_healthy_runs_unchanged(rig.services, rig.healthy)


def test_the_cli_and_the_api_list_the_hostile_dead_letters(rig: Rig) -> None:
    task_id = str(uuid.uuid4())
    publish(rig.channel, PLAN_QUEUE, "listed", headers={"task": ["etl.plan_run"], "id": task_id},
            body=b'[["x"],{},{}]')  # fmt: skip

    def listed_by_cli() -> dict[str, Any] | None:
        out = run_etl(rig.settings, "dlq", "list", "--json")
        assert out.returncode == 0, out.stderr
        return next((x for x in json.loads(out.stdout) if x["task_id"] == task_id), None)

    letter = wait_until(listed_by_cli, timeout_s=60, what="etl dlq list showing the letter")
    assert "header 'task'" in letter["reason"]
    client = create_app(rig.settings).test_client()
    answer = client.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    by_api = [x for x in answer.get_json()["dead_letters"] if x["task_id"] == task_id]
    assert [x["reason"] for x in by_api] == [letter["reason"]]
