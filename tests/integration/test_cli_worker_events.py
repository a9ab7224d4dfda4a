"""``etl worker --events`` sends Celery's task events, what Flower shows of each task:
caught here by an event receiver on a vhost of the test's own, from a real worker
process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from etl.bootstrap import Services
from etl.config import Settings
from etl.worker.app import make_celery

from support import RABBITMQ_URL, SESSION_TAG, ChildProcess, scratch_vhost, wait_until


def test_a_worker_started_with_events_sends_task_events(
    service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    with scratch_vhost(f"etl-events-{SESSION_TAG}") as vhost:
        settings = service_settings.model_copy(
            update={
                "broker_url": f"{RABBITMQ_URL}/{vhost}",
                # A ledger of its own: the reconcile task below acts on every run it holds.
                "database_url": "sqlite:///" + str(tmp_path / "ledger.db"),
            }
        )
        app = make_celery(settings)
        events: list[dict[str, Any]] = []
        with app.connection_for_read() as connection:
            # Bound before the task is sent (worker heartbeats flow with or without
            # --events, so the first of them says the receiver's queue is in place).
            receiver = app.events.Receiver(connection, handlers={"*": events.append})
            capture = threading.Thread(
                target=receiver.capture, kwargs={"limit": None, "timeout": 60}, daemon=True
            )
            worker = ChildProcess.etl(
                ["worker", "--events", "--concurrency", "1"], settings, tmp_path / "worker.log"
            )
            try:
                worker.wait_for_log("ready.")
                capture.start()
                wait_until(lambda: events, timeout_s=30, what="a worker heartbeat")

                sent = app.send_task("etl.reconcile")

                def succeeded() -> bool:
                    return any(
                        e["type"] == "task-succeeded" and e.get("uuid") == sent.id for e in events
                    )

                wait_until(succeeded, timeout_s=60, what="task-succeeded of etl.reconcile")
            finally:
                receiver.should_stop = True
                worker.stop()
                capture.join(timeout=10)

    log = worker.log_path.read_text(errors="replace")
    kinds = {e["type"] for e in events if e.get("uuid") == sent.id}
    assert {"task-received", "task-started", "task-succeeded"} <= kinds, log
    [received] = [e for e in events if e["type"] == "task-received" and e["uuid"] == sent.id]
    assert received["name"] == "etl.reconcile"
    assert "task events: ON" in log
