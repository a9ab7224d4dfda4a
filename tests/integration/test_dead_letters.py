"""Dead letters against the real RabbitMQ and PostgreSQL, on vhosts with no workers.

Raw messages (pika, an independent publisher) are parked as the worker's consumer parks
them (published to a work queue, taken and rejected without requeue: RabbitMQ
dead-letters them) or forged straight into a dead-letter queue. Each is recorded on its
own, bounded, with a reason that names what is wrong; the sync never stops on one; only
one of ours, dead where and why the broker says, changes a run; a replay acts once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kombu import Connection, Queue
from pika.exceptions import ChannelClosedByBroker
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api import create_app
from etl.adapters.db import make_engine
from etl.adapters.ledger import SCHEMA_VERSION, Ledger, upgrade
from etl.adapters.topology import (
    COMMIT_QUEUE,
    PLAN_QUEUE,
    TRANSFORM_QUEUE,
    WORK_EXCHANGE,
    WORK_QUEUES,
    declare_topology,
)
from etl.bootstrap import Services
from etl.cli import main
from etl.config import Settings, settings_env
from etl.domain.dead_letters import BODY_KEPT_BYTES, HEADERS_KEPT_BYTES, DeadLetter
from etl.domain.runs import ChunkState, Run, RunState
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService

from builders import (
    CASE_HEADER,
    SigningIdentities,
    death,
    planned_run,
    run_in_state,
    signed,
    signing_identities,
    tampered,
    task_body,
    task_headers,
)
from fakes import RecordingEnqueue
from support import (
    API_TOKEN,
    RABBITMQ_URL,
    confirmed_channel,
    publish_raw,
    scratch_database,
    scratch_vhost,
    wait_until,
)

pytestmark = pytest.mark.integration

UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"


# -- the broker: a vhost with the topology and nothing consuming ----------------------------


@pytest.fixture
def idle_broker(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost with the topology declared and nothing consuming it."""
    with scratch_vhost(f"{rabbitmq_vhost}-dlq-{uuid.uuid4().hex[:6]}") as vhost:
        url = f"{RABBITMQ_URL}/{vhost}"
        declare_topology(url)
        yield url


def queue_depth(url: str, name: str) -> int:
    with Connection(url) as connection:
        _, count, _ = Queue(name, no_declare=True)(connection.channel()).queue_declare(passive=True)
        return int(count)


def dead_letter_depth(url: str) -> int:
    return sum(queue_depth(url, f"{queue}.dlq") for queue in WORK_QUEUES)


def raw_publish(url: str, **message: Any) -> None:
    """One message as a publisher with broker rights could send it, confirmed."""
    with confirmed_channel(url) as channel:
        publish_raw(channel, **message)


def park(
    url: str,
    queue: str,
    headers: dict[str, Any],
    body: bytes,
    content_type: str = "application/json",
) -> None:
    """As the worker's consumer refuses a message (or a task gives up on it): published to
    its work queue, taken, rejected without requeue; RabbitMQ dead-letters it."""
    before = dead_letter_depth(url)
    raw_publish(url, exchange=WORK_EXCHANGE.name, routing_key=queue, headers=headers,
                body=body, content_type=content_type)  # fmt: skip
    with confirmed_channel(url) as channel:

        def taken() -> Any:
            method, _, _ = channel.basic_get(queue, auto_ack=False)
            return method

        method = wait_until(taken, timeout_s=10, what=f"the message on {queue}")
        channel.basic_nack(method.delivery_tag, requeue=False)
    wait_until(lambda: dead_letter_depth(url) > before, timeout_s=10, what="the dead letter")


def forge(url: str, queue: str, headers: dict[str, Any], body: bytes, **kwargs: Any) -> None:
    """Published straight into ``queue``'s dead-letter queue (the default exchange reaches
    every queue by name): a dead letter RabbitMQ never made."""
    before = dead_letter_depth(url)
    raw_publish(url, exchange="", routing_key=f"{queue}.dlq", headers=headers, body=body,
                **kwargs)  # fmt: skip
    wait_until(lambda: dead_letter_depth(url) > before, timeout_s=10, what="the forged letter")


def letter_of(ledger: Ledger, case: str) -> DeadLetter:
    """The one dead letter recorded for a test case (whatever state it is in)."""
    found = [
        letter
        for letter in ledger.list_dead_letters(state=None, limit=100_000)
        if letter.headers.get(CASE_HEADER) == case
    ]
    assert len(found) == 1, f"{len(found)} dead letters for {case}"
    return found[0]


def service(url: str, ledger: Ledger, **kwargs: Any) -> DeadLetterService:
    return DeadLetterService(ledger, url, RunService(ledger, RecordingEnqueue()), **kwargs)


def synced_letter(url: str, ledger: Ledger, case: str, **kwargs: Any) -> DeadLetter:
    """Sync the dead-letter queues into ``ledger`` (``kwargs``: the service's options); the
    letter of ``case``."""
    service(url, ledger, **kwargs).sync()
    return letter_of(ledger, case)


def new_run(ledger: Ledger, state: RunState, *, running_chunk: int | None = None) -> Run:
    """A run in ``state``, planned in two chunks from running on; one of them started
    (running) if ``running_chunk`` is given."""
    if state not in {RunState.RUNNING, RunState.COMMITTING}:
        return ledger.get_run(run_in_state(ledger, state))
    run_id = planned_run(ledger, chunks=2)
    if running_chunk is not None:
        assert ledger.start_chunk(run_id, running_chunk).chunk is not None
    if state is RunState.COMMITTING:
        assert ledger.move_run(run_id, RunState.COMMITTING)
    return ledger.get_run(run_id)


def unchanged(ledger: Ledger, run: Run) -> bool:
    """The run is as it was, and none of its chunks failed."""
    after = ledger.get_run(run.id)
    return (after.state, after.reason) == (run.state, run.reason) and all(
        chunk.state is not ChunkState.FAILED for chunk in ledger.get_chunks(run.id)
    )


# -- 1. each dead letter on its own: recorded in bounds, acked, the sync goes on -----------

TWENTY_MB_RUN_ID = "r" * 20_000_000
# (case, queue, headers, body, content type, words of its reason). Each one stopped the
# sync before: a value too long or out of range for its column, a NUL that PostgreSQL
# cannot store, a list where the ledger keeps text.
UNRECORDABLE = [
    ("run-id-37", TRANSFORM_QUEUE, {}, task_body("r" * 37, 0), "application/json",
     "argument run_id must be a UUID"),
    ("run-id-nul", TRANSFORM_QUEUE, {}, task_body(UNKNOWN_RUN[:-1] + "\x00", 0),
     "application/json", "argument run_id must be a UUID"),
    ("run-id-20mb", TRANSFORM_QUEUE, {}, task_body(TWENTY_MB_RUN_ID, 0), "application/json",
     "over 262144"),
    ("chunk-index-huge", TRANSFORM_QUEUE, {}, task_body(UNKNOWN_RUN, 99_999_999_999),
     "application/json", "argument chunk_index must be between 0 and"),
    ("nul-in-headers", PLAN_QUEUE, {"id": "a\x00b", "origin": "\x00"}, task_body(UNKNOWN_RUN),
     "application/json", "header 'id' must not contain NUL"),
    ("nul-in-content-type", PLAN_QUEUE, {}, task_body(UNKNOWN_RUN), "application/json\x00",
     "content type 'application/json\ufffd' is refused"),
    # Within the contract (stamps is any table), but JSONB cannot hold a NUL.
    ("nul-in-nested-header", PLAN_QUEUE, {"stamps": {"k\x00": ["v\x00"]}},
     task_body(UNKNOWN_RUN), "application/json", f"run {UNKNOWN_RUN} is not in the ledger"),
    ("task-list", PLAN_QUEUE, {"task": ["etl.plan_run"]}, b'[["x"],{},{}]', "application/json",
     "header 'task' must be a string, got list"),
    ("task-id-500", COMMIT_QUEUE, {"task": "etl.commit_run", "id": "i" * 500},
     task_body(UNKNOWN_RUN), "application/json", f"run {UNKNOWN_RUN} is not in the ledger"),
    ("huge-headers", PLAN_QUEUE, {"argsrepr": "a" * 100_000}, task_body(UNKNOWN_RUN),
     "application/json", "header 'argsrepr' must be at most 4000 characters"),
    # kombu decompresses a body whose header asks for it: this one fails to, and a real
    # one (100 MB of zeros in 100 kB) must not be inflated by the sync either.
    ("compressed-garbage", PLAN_QUEUE, {"compression": "application/x-gzip"},
     task_body(UNKNOWN_RUN), "application/json", "header 'compression' is refused"),
    ("compressed-bomb", PLAN_QUEUE, {"compression": "application/x-gzip"},
     zlib.compress(bytes(100_000_000), 9), "application/json",
     "header 'compression' is refused"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "queue", "changes", "body", "content_type", "words"),
    UNRECORDABLE,
    ids=[case[0] for case in UNRECORDABLE],
)
def test_a_dead_letter_that_could_not_be_recorded_is_recorded_in_bounds_and_the_rest_too(
    idle_broker: str,
    services: Services,
    case: str,
    queue: str,
    changes: dict[str, Any],
    body: bytes,
    content_type: str,
    words: str,
) -> None:
    case = f"{case}-{uuid.uuid4().hex[:6]}"
    task = {PLAN_QUEUE: "etl.plan_run", COMMIT_QUEUE: "etl.commit_run"}.get(
        queue, "etl.transform_chunk"
    )
    park(idle_broker, queue, {**task_headers(task, case), **changes}, body, content_type)
    # A well-formed one behind it, which the bad one used to hold up for ever.
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", f"{case}-next"),
         task_body(UNKNOWN_RUN))  # fmt: skip

    assert service(idle_broker, services.ledger).sync() == 2

    assert dead_letter_depth(idle_broker) == 0  # both acknowledged
    letter = letter_of(services.ledger, case)
    assert words in letter.reason, letter.reason
    assert (letter.body_size, letter.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert letter.body == body[:BODY_KEPT_BYTES]
    assert len(json.dumps(letter.headers)) <= HEADERS_KEPT_BYTES + 1_000
    assert letter.death_reason == "rejected" and letter.queue == queue
    assert letter.run_id in {None, UNKNOWN_RUN}
    assert letter_of(services.ledger, f"{case}-next").reason == (
        f"run {UNKNOWN_RUN} is not in the ledger"
    )


@pytest.mark.parametrize(
    ("x_death", "words"),
    [
        ("garbage", "its death record (x-death) is malformed"),
        (["etl.plan"], "its death record (x-death) is malformed"),
        ([{"queue": "etl.plan", "reason": "rejected", "count": "many"}], "is malformed"),
        ([{"queue": "q" * 300, "reason": "r" * 300, "count": 1}], "is malformed"),
    ],
    ids=["text", "list-of-text", "count-as-text", "huge-fields"],
)
def test_a_dead_letter_with_a_broken_death_record_is_recorded_and_the_sync_goes_on(
    idle_broker: str, services: Services, x_death: Any, words: str
) -> None:
    case = f"broken-death-{uuid.uuid4().hex[:6]}"
    forge(idle_broker, PLAN_QUEUE, {**task_headers("etl.plan_run", case), "x-death": x_death},
          task_body(UNKNOWN_RUN))  # fmt: skip
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", f"{case}-next"),
         task_body(UNKNOWN_RUN))  # fmt: skip

    assert service(idle_broker, services.ledger).sync() == 2

    letter = letter_of(services.ledger, case)
    assert words in letter.reason and letter.death_reason is None
    assert letter_of(services.ledger, f"{case}-next").death_reason == "rejected"


def test_when_the_ledger_is_down_the_sync_stops_and_leaves_the_letters_queued(
    idle_broker: str,
) -> None:
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", "ledger-down"),
         task_body(UNKNOWN_RUN))  # fmt: skip
    # Nothing listens on port 1: every statement fails to connect.
    down = Ledger(make_engine("postgresql+psycopg2://postgres@127.0.0.1:1/etl"))

    with pytest.raises(Exception, match=r"127\.0\.0\.1"):
        service(idle_broker, down).sync()

    assert queue_depth(idle_broker, f"{PLAN_QUEUE}.dlq") == 1  # not the message's fault


# -- 2. reasons are true and specific ------------------------------------------------------

REASONS = [
    ("wrong-types", TRANSFORM_QUEUE, "etl.transform_chunk", {}, task_body(12345, "zero"),
     "application/json", "argument run_id must be a string, got int"),
    ("wrong-count", TRANSFORM_QUEUE, "etl.transform_chunk", {}, task_body(UNKNOWN_RUN),
     "application/json", "etl.transform_chunk is missing argument chunk_index"),
    ("unknown-kwarg", PLAN_QUEUE, "etl.plan_run", {}, task_body(UNKNOWN_RUN, kwargs={"f": 1}),
     "application/json", "etl.plan_run has no argument 'f'"),
    ("retries-text", PLAN_QUEUE, "etl.plan_run", {"retries": "3"}, task_body(UNKNOWN_RUN),
     "application/json", "header 'retries' must be an integer, got str"),
    ("protocol-1", PLAN_QUEUE, ..., {}, json.dumps({"task": "etl.plan_run", "id": "1",
     "args": [UNKNOWN_RUN], "kwargs": {}}).encode(), "application/json",
     "no 'task' header: a protocol 1 message (task in the body) is refused"),
    ("eta-a-day-ahead", PLAN_QUEUE, "etl.plan_run",
     {"eta": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, task_body(UNKNOWN_RUN),
     "application/json", "s ahead, beyond the 360 s a worker may hold a message"),
    ("pickle", PLAN_QUEUE, "etl.plan_run", {}, b"\x80\x04\x95", "application/x-python-serialize",
     "content type 'application/x-python-serialize' is refused (accepted: application/json)"),
    ("not-json", PLAN_QUEUE, "etl.plan_run", {}, b'[["run", 0], {}, {', "application/json",
     "the body is not valid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "queue", "task", "changes", "body", "content_type", "words"),
    REASONS,
    ids=[case[0] for case in REASONS],
)
def test_the_reason_names_what_the_worker_refused_it_for(
    idle_broker: str,
    services: Services,
    case: str,
    queue: str,
    task: Any,
    changes: dict[str, Any],
    body: bytes,
    content_type: str,
    words: str,
) -> None:
    case = f"{case}-{uuid.uuid4().hex[:6]}"
    park(idle_broker, queue, task_headers(task, case, **changes), body, content_type)

    letter = synced_letter(idle_broker, services.ledger, case)
    assert words in letter.reason, letter.reason
    assert "see its log" not in letter.reason and letter.run_id is None


# -- 3. forged dead letters change no run ---------------------------------------------------


def test_nobody_can_publish_into_the_dead_letter_exchange(idle_broker: str) -> None:
    with pytest.raises(ChannelClosedByBroker) as refused:
        raw_publish(idle_broker, exchange="etl.dlx", routing_key=PLAN_QUEUE,
                    headers=task_headers("etl.plan_run", "via-dlx"),
                    body=task_body(UNKNOWN_RUN))  # fmt: skip

    assert refused.value.reply_code == 403
    assert "internal exchange 'etl.dlx'" in refused.value.reply_text
    assert dead_letter_depth(idle_broker) == 0


@pytest.mark.parametrize(
    ("x_death", "state", "words"),
    [
        (None, RunState.PLANNING, "no death record (x-death): RabbitMQ did not dead-letter it"),
        ([death(COMMIT_QUEUE)], RunState.PLANNING, "names queue 'etl.commit', not 'etl.plan'"),
        ([death(PLAN_QUEUE, time=...)], RunState.PLANNING, "is malformed"),
        ([death(PLAN_QUEUE, reason="maxlen")], RunState.PLANNING, "max-length"),
        # Well-formed and from the right queue, but about a run no worker had taken up.
        ([death(PLAN_QUEUE)], RunState.QUEUED, "rejected by a worker after its task gave up"),
    ],
    ids=["no-death", "other-queue", "no-death-time", "maxlen", "work-not-started"],
)
def test_a_forged_dead_letter_is_recorded_with_its_run_and_changes_nothing(
    idle_broker: str,
    services: Services,
    x_death: list[dict[str, Any]] | None,
    state: RunState,
    words: str,
) -> None:
    run = new_run(services.ledger, state)
    case = f"forged-{uuid.uuid4().hex[:6]}"
    headers = task_headers("etl.plan_run", case)
    if x_death is not None:
        headers["x-death"] = x_death
    forge(idle_broker, PLAN_QUEUE, headers, task_body(run.id))

    letter = synced_letter(idle_broker, services.ledger, case)
    assert letter.run_id == run.id and words in letter.reason, letter.reason
    assert unchanged(services.ledger, run)


def test_a_message_the_consumer_refused_changes_no_run_even_for_work_under_way(
    idle_broker: str, services: Services
) -> None:
    run = new_run(services.ledger, RunState.RUNNING, running_chunk=1)
    case = f"refused-{uuid.uuid4().hex[:6]}"
    # Its arguments name a running chunk; a header breaks the contract.
    headers = task_headers("etl.transform_chunk", case, timelimit="60")
    park(idle_broker, TRANSFORM_QUEUE, headers, task_body(run.id, 1))

    letter = synced_letter(idle_broker, services.ledger, case)
    assert letter.run_id is None and "header 'timelimit'" in letter.reason
    assert unchanged(services.ledger, run)


# -- ...and what the broker parks of ours fails the work it left undone ---------------------


def test_a_chunk_a_worker_gave_up_on_fails_its_run_when_the_worker_could_not(
    idle_broker: str, services: Services
) -> None:
    # The task gave up while the ledger was down: the chunk still shows running.
    run = new_run(services.ledger, RunState.RUNNING, running_chunk=1)
    case = f"gave-up-{uuid.uuid4().hex[:6]}"
    park(idle_broker, TRANSFORM_QUEUE, task_headers("etl.transform_chunk", case),
         task_body(run.id, 1))  # fmt: skip

    service(idle_broker, services.ledger).sync()

    failed = services.ledger.get_run(run.id)
    assert failed.state is RunState.FAILED
    assert failed.reason is not None and failed.reason.startswith(
        "chunk 1 dead-lettered: rejected by a worker after its task gave up"
    )
    states = [c.state for c in services.ledger.get_chunks(run.id)]
    assert states == [ChunkState.PENDING, ChunkState.FAILED]
    assert letter_of(services.ledger, case).run_id == run.id


@pytest.fixture
def quorum_broker(rabbitmq_vhost: str) -> Iterator[str]:
    """Quorum queues that dead-letter a message delivered more than once."""
    with scratch_vhost(f"{rabbitmq_vhost}-dlq-q-{uuid.uuid4().hex[:6]}") as vhost:
        url = f"{RABBITMQ_URL}/{vhost}"
        declare_topology(url, queue_type="quorum", delivery_limit=1)
        yield url


def test_a_chunk_the_broker_parks_at_its_delivery_limit_fails_its_active_run_naming_it(
    quorum_broker: str, services: Services
) -> None:
    run = new_run(services.ledger, RunState.RUNNING)
    case = f"delivery-limit-{uuid.uuid4().hex[:6]}"
    headers = task_headers("etl.transform_chunk", case)
    raw_publish(quorum_broker, exchange=WORK_EXCHANGE.name, routing_key=TRANSFORM_QUEUE,
                headers=headers, body=task_body(run.id, 1))  # fmt: skip
    with confirmed_channel(quorum_broker) as channel:

        def returned_until_parked() -> bool:
            # A worker that dies holding it, again and again: returned to the queue.
            method, _, _ = channel.basic_get(TRANSFORM_QUEUE, auto_ack=False)
            if method is not None:
                channel.basic_nack(method.delivery_tag, requeue=True)
            return queue_depth(quorum_broker, f"{TRANSFORM_QUEUE}.dlq") == 1

        wait_until(returned_until_parked, timeout_s=20, what="the delivery limit")

    service(quorum_broker, services.ledger).sync()

    failed = services.ledger.get_run(run.id)
    assert failed.state is RunState.FAILED
    assert failed.reason == (
        "chunk 1 dead-lettered: delivered too many times (quorum queue delivery limit)"
    )
    states = [c.state for c in services.ledger.get_chunks(run.id)]
    assert states == [ChunkState.PENDING, ChunkState.FAILED]


def test_a_plan_that_expired_before_a_worker_took_it_fails_its_queued_run(
    idle_broker: str, services: Services
) -> None:
    run = new_run(services.ledger, RunState.QUEUED)
    raw_publish(idle_broker, exchange=WORK_EXCHANGE.name, routing_key=PLAN_QUEUE,
                headers=task_headers("etl.plan_run", f"expired-{run.id}"),
                body=task_body(run.id), expiration="1")  # fmt: skip
    wait_until(
        lambda: queue_depth(idle_broker, f"{PLAN_QUEUE}.dlq") == 1, timeout_s=10, what="expiry"
    )

    service(idle_broker, services.ledger).sync()

    failed = services.ledger.get_run(run.id)
    assert (failed.state, failed.reason) == (
        RunState.FAILED,
        "dead-lettered: expired before a worker took it",
    )


# -- 4. under signing: verified with the workers' certificate store ------------------------


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> SigningIdentities:
    """The workers' identity and store, and a stranger's identity."""
    return signing_identities(tmp_path_factory.mktemp("signing"))


def test_under_signing_a_genuine_dead_letter_names_its_run_and_fails_what_it_left_undone(
    idle_broker: str, services: Services, signing: SigningIdentities
) -> None:
    run = new_run(services.ledger, RunState.PLANNING)  # a planning that gave up
    case = f"signed-{uuid.uuid4().hex[:6]}"
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", case),
         signed(signing.trusted, task_body(run.id)), "application/data")  # fmt: skip

    letter = synced_letter(idle_broker, services.ledger, case, cert_store=str(signing.store))
    assert letter.run_id == run.id
    failed = services.ledger.get_run(run.id)
    assert failed.state is RunState.FAILED
    assert failed.reason is not None and failed.reason.startswith(
        "dead-lettered: rejected by a worker after its task gave up"
    )


SIGNING_REFUSALS = [
    ("unsigned", "json", "application/json",
     "not signed: content type 'application/json', and the workers run only signed messages"),
    ("tampered", "tampered", "application/data", "the signature does not verify"),
    ("stranger", "stranger", "application/data",
     "signed by a certificate the workers do not trust: 'stranger "),
    ("not-signed-at-all", "garbage", "application/data",
     "not signed: the body is not a signed message (Celery's auth format)"),
    ("signed-wrong-arguments", "wrong-arguments", "application/data",
     "etl.plan_run takes 1 argument(s), got 2 positional"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "kind", "content_type", "words"),
    SIGNING_REFUSALS,
    ids=[case[0] for case in SIGNING_REFUSALS],
)
def test_under_signing_an_unverified_dead_letter_says_exactly_why_and_changes_no_run(
    idle_broker: str,
    services: Services,
    signing: SigningIdentities,
    case: str,
    kind: str,
    content_type: str,
    words: str,
) -> None:
    run = new_run(services.ledger, RunState.PLANNING)
    other = new_run(services.ledger, RunState.PLANNING)
    bodies = {
        "json": lambda: task_body(run.id),
        "tampered": lambda: tampered(
            signed(signing.trusted, task_body(other.id)), other.id, run.id
        ),
        "stranger": lambda: signed(signing.stranger, task_body(run.id)),
        "garbage": lambda: base64.b64encode(task_body(run.id)),
        "wrong-arguments": lambda: signed(signing.trusted, task_body(run.id, 1)),
    }
    case = f"{case}-{uuid.uuid4().hex[:6]}"
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", case), bodies[kind](),
         content_type)  # fmt: skip

    letter = synced_letter(idle_broker, services.ledger, case, cert_store=str(signing.store))
    assert words in letter.reason, letter.reason
    assert letter.run_id is None
    assert unchanged(services.ledger, run) and unchanged(services.ledger, other)


# -- 6. a replay happens once -----------------------------------------------------------------


def replay_at_once(dead_letters: DeadLetterService, letter_id: int, times: int) -> list[str]:
    start = threading.Barrier(times)

    def replay(_: int) -> str:
        start.wait()
        return dead_letters.replay(letter_id).action

    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(replay, range(times)))


def test_twenty_replays_at_once_of_a_failed_runs_letter_retry_it_once_and_send_nothing_else(
    idle_broker: str, services: Services
) -> None:
    ledger = services.ledger
    run = new_run(ledger, RunState.RUNNING)
    case = f"replay-retry-{uuid.uuid4().hex[:6]}"
    park(idle_broker, TRANSFORM_QUEUE, task_headers("etl.transform_chunk", case),
         task_body(run.id, 1))  # fmt: skip
    enqueue = RecordingEnqueue()
    dead_letters = DeadLetterService(ledger, idle_broker, RunService(ledger, enqueue))
    dead_letters.sync()
    ledger.fail_run(run.id, "chunk 1 failed: boom")

    actions = replay_at_once(dead_letters, letter_of(ledger, case).id, 20)

    assert actions.count(f"retried run {run.id}") == 1, actions
    assert enqueue.calls == [("etl.plan_run", [run.id])]
    assert queue_depth(idle_broker, TRANSFORM_QUEUE) == 0  # and no republish
    assert ledger.get_run(run.id).state is RunState.QUEUED


def test_twenty_replays_at_once_of_a_letter_republish_it_once(
    idle_broker: str, services: Services
) -> None:
    case = f"replay-send-{uuid.uuid4().hex[:6]}"
    park(idle_broker, PLAN_QUEUE, task_headers("etl.plan_run", case), task_body(UNKNOWN_RUN))
    enqueue = RecordingEnqueue()
    dead_letters = DeadLetterService(
        services.ledger, idle_broker, RunService(services.ledger, enqueue)
    )
    dead_letters.sync()

    actions = replay_at_once(dead_letters, letter_of(services.ledger, case).id, 20)

    assert actions.count(f"republished to {PLAN_QUEUE}") == 1, actions
    assert queue_depth(idle_broker, PLAN_QUEUE) == 1 and enqueue.calls == []


# -- 7. the CLI and the API with hostile letters in the queues -----------------------------


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """The URL of an empty database of the test's own, dropped afterwards."""
    admin_url = make_url(postgres_url).set(database="postgres")
    with scratch_database(admin_url.render_as_string(hide_password=False),
                          f"etl_dlq_{uuid.uuid4().hex[:8]}") as url:  # fmt: skip
        yield url


@pytest.fixture
def own_ledger_settings(
    idle_broker: str, service_settings: Settings, fresh_database: str
) -> Settings:
    """Settings on the idle broker and a database of the test's own: `dlq replay --all`
    and `dlq purge` act on every letter of their ledger."""
    return service_settings.model_copy(
        update={"broker_url": idle_broker, "database_url": fresh_database}
    )


def test_the_cli_and_the_api_list_replay_and_purge_with_hostile_letters_in_the_queues(
    own_ledger_settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = own_ledger_settings.broker_url
    hostile = {
        "20mb": (TRANSFORM_QUEUE, task_headers("etl.transform_chunk", "20mb"),
                 task_body(TWENTY_MB_RUN_ID, 0), "application/json"),
        "nul": (PLAN_QUEUE, task_headers("etl.plan_run", "nul", id="\x00"),
                task_body(UNKNOWN_RUN), "application/json\x00"),
        "huge-index": (TRANSFORM_QUEUE, task_headers("etl.transform_chunk", "huge-index"),
                       task_body(UNKNOWN_RUN, 99_999_999_999), "application/json"),
        "task-list": (PLAN_QUEUE, task_headers(["etl.plan_run"], "task-list"), b"[]",
                      "application/json"),
        "ours": (PLAN_QUEUE, task_headers("etl.plan_run", "ours"), task_body(UNKNOWN_RUN),
                 "application/json"),
    }  # fmt: skip
    for queue, headers, body, content_type in hostile.values():
        park(url, queue, headers, body, content_type)
    forge(url, PLAN_QUEUE, {**task_headers("etl.plan_run", "bad-death"), "x-death": "x"},
          task_body(UNKNOWN_RUN))  # fmt: skip
    for name, value in settings_env(own_ledger_settings).items():
        monkeypatch.setenv(name, value)
    engine = make_engine(own_ledger_settings.database_url)
    upgrade(engine)
    ledger = Ledger(engine)

    assert main(["dlq", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 6 and dead_letter_depth(url) == 0

    client = create_app(own_ledger_settings).test_client()
    answer = client.get("/api/v1/dead-letters", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert {x["id"] for x in answer.get_json()["dead_letters"]} == {x["id"] for x in listed}

    assert main(["dlq", "replay", "--all"]) == 0
    replayed = capsys.readouterr().out
    twenty_mb = letter_of(ledger, "20mb")
    assert f"dead letter {twenty_mb.id}: not sent: the ledger holds only part of it" in replayed
    assert f"dead letter {letter_of(ledger, 'ours').id}: republished to etl.plan" in replayed
    assert replayed.count("dead letter ") == 6

    assert main(["dlq", "purge"]) == 0
    # What replay --all sent went back to the work queues; nothing is left dead.
    assert ledger.list_dead_letters() == []
    engine.dispose()


def test_a_version_4_ledger_keeps_its_dead_letters_whole_after_the_migration(
    fresh_database: str,
) -> None:
    engine = make_engine(fresh_database)
    upgrade(engine)
    with engine.begin() as conn:  # back to what version 4 created, with one dead letter
        conn.execute(text("ALTER TABLE etl_dead_letters DROP COLUMN body_size"))
        conn.execute(text("ALTER TABLE etl_dead_letters DROP COLUMN body_sha256"))
        conn.execute(text("DELETE FROM etl_schema_version WHERE version > 4"))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO etl_dead_letters (fingerprint, queue, reason, death_count, state, "
                "first_seen_at, last_seen_at, replay_count, headers, body) VALUES ('f', "
                "'etl.plan', 'r', 1, 'dead', now(), now(), 0, '{}', :body)"
            ),
            {"body": b"[1, 2, 3]"},
        )

    assert upgrade(engine) == SCHEMA_VERSION

    [letter] = Ledger(engine).list_dead_letters()
    assert (letter.body, letter.body_size, letter.body_sha256) == (b"[1, 2, 3]", 9, None)
    assert letter.kept_whole
    engine.dispose()
