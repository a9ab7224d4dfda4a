"""The run id travels in every run task's message headers, on the real broker."""

from __future__ import annotations

from kombu import Connection

from etl.adapters.topology import PLAN_QUEUE, TRANSFORM_QUEUE, declare_topology, work_queues
from etl.config import Settings
from etl.worker.app import TASK_PLAN_RUN, TASK_TRANSFORM_CHUNK, make_celery

from support import scratch_vhost


def test_run_tasks_carry_their_run_id_in_a_header(
    service_settings: Settings, rabbitmq_vhost: str
) -> None:
    with scratch_vhost(f"{rabbitmq_vhost}-headers") as vhost:
        broker = service_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}"
        declare_topology(broker)
        app = make_celery(service_settings.model_copy(update={"broker_url": broker}))
        app.send_task(TASK_PLAN_RUN, args=["run-123"])
        app.send_task(TASK_TRANSFORM_CHUNK, args=["run-123", 4])
        queues = {queue.name: queue for queue in work_queues("classic", 10)}
        with Connection(broker) as connection:
            got = {}
            for name in (PLAN_QUEUE, TRANSFORM_QUEUE):
                message = queues[name](connection.channel()).get(no_ack=True)
                assert message is not None
                got[name] = message.headers
    assert got[PLAN_QUEUE]["run_id"] == "run-123"
    assert got[TRANSFORM_QUEUE]["run_id"] == "run-123"
    assert got[TRANSFORM_QUEUE]["task"] == TASK_TRANSFORM_CHUNK
