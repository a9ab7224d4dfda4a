"""Structured logs: a worker in JSON mode writes one event per line, and every event of
a run's plan, chunks and commit carries the run id (one grep follows the run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import RunState
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import celery_enqueue, make_celery

from support import ChildProcess

pytestmark = pytest.mark.e2e


def test_a_json_logging_worker_tags_every_event_of_a_run_with_its_id(
    service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    seed_orders(services.source_engine, 2_000)
    settings = service_settings.model_copy(update={"log_format": "json"})
    worker = ChildProcess.etl(["worker", "--concurrency", "1"], settings, tmp_path / "w.log")
    try:
        worker.wait_for_log("ready.")
        service = RunService(services.ledger, celery_enqueue(make_celery(settings)))
        run, _ = service.start_run(
            "orders_daily", interval=__import__("datetime").date(2024, 2, 2),
            params={"chunk_size": 500},
        )  # fmt: skip
        final = wait_for_run(services.ledger, run.id, timeout_s=120)
        assert final.state is RunState.SUCCEEDED, final.reason
    finally:
        worker.stop()

    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    # Every line is one JSON event, but for the notice Celery prints (not logs) when
    # it is told to stop.
    assert [line for line in lines if not line.startswith("{")] == [
        "worker: Warm shutdown (MainProcess)"
    ]
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"ts", "level", "service", "logger", "message", "pid"} <= set(events[0])
    of_run = [e for e in events if e.get("run_id") == run.id]
    grepped = [line for line in lines if run.id in line]
    assert len(grepped) >= len(of_run) > 0
    tasks = {e.get("task") for e in of_run}
    assert {"etl.plan_run", "etl.transform_chunk", "etl.commit_run"} <= tasks
    assert {e["chunk"] for e in of_run if e.get("task") == "etl.transform_chunk"} == {0, 1, 2, 3}
    assert any(e["message"].startswith(f"planned run {run.id}") for e in of_run)
    assert any(e["message"].startswith(f"committed run {run.id}") for e in of_run)
    assert all(e.get("task_id") for e in of_run if e.get("task"))
    assert "guest:guest" not in worker.log_path.read_text()


def test_beat_and_the_api_log_json_too(
    service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    import socket
    import urllib.request

    from support import API_TOKEN, wait_until

    settings = service_settings.model_copy(update={"log_format": "json"})
    beat = ChildProcess.etl(["beat"], settings, tmp_path / "beat.log")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = ChildProcess.etl(
        ["api", "--bind", f"127.0.0.1:{port}", "--workers", "1"], settings, tmp_path / "api.log"
    )
    try:
        beat.wait_for_log("beat: entry pipeline:orders_daily")

        def answered() -> bool:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/runs?limit=1",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(answered, timeout_s=30, what="the API to answer")
        wait_until(lambda: "/api/v1/runs?limit=1" in api.log(), timeout_s=10, what="access log")
    finally:
        beat.stop()
        api.stop()

    for name, service in (("beat.log", "beat"), ("api.log", "api")):
        lines = [line for line in (tmp_path / name).read_text().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]  # every line is one JSON event
        assert events and {e["service"] for e in events} == {service}
    api_log = (tmp_path / "api.log").read_text()
    assert API_TOKEN not in api_log
    assert any(
        '"GET /api/v1/runs?limit=1 HTTP/1.1" 200' in json.loads(line)["message"]
        for line in api_log.splitlines()
        if line.startswith("{")
    )
