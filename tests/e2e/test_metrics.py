"""Metrics from a real worker (multi-process) and from the API, checked against the
ledger after a real run."""

from __future__ import annotations

import socket
import urllib.request
from datetime import date
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api import create_app
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import RunState
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import celery_enqueue, make_celery

from support import API_TOKEN, ChildProcess, wait_until

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_worker_and_api_metrics_agree_with_the_ledger(
    service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    seed_orders(services.source_engine, 3_000)
    port = free_port()
    settings = service_settings.model_copy(update={"metrics_port": port})
    worker = ChildProcess.etl(["worker", "--concurrency", "2"], settings, tmp_path / "w.log")
    try:
        worker.wait_for_log("ready.")
        service = RunService(services.ledger, celery_enqueue(make_celery(settings)))
        run, _ = service.start_run(
            "orders_daily", interval=date(2024, 3, 3), params={"chunk_size": 500}
        )
        final = wait_for_run(services.ledger, run.id, timeout_s=120)
        assert final.state is RunState.SUCCEEDED, final.reason

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return samples(r.read().decode())

        orders = (("pipeline", "orders_daily"),)
        # the commit is recorded a moment before its process writes the counter file
        wait_until(
            lambda: scrape().get(("etl_runs_finished_total", (
                ("pipeline", "orders_daily"), ("state", "succeeded")))) is not None,
            timeout_s=10, what="the finished run counted",
        )  # fmt: skip
        worker_figures = scrape()

        app = create_app(settings.model_copy(update={"api_token": SecretStr(API_TOKEN)}))
        client = app.test_client()
        assert client.get("/metrics").status_code == 401
        response = client.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert response.status_code == 200
        api_figures = samples(response.get_data(as_text=True))
    finally:
        worker.stop()

    chunks = services.ledger.get_chunks(run.id)
    # Summed over both pool processes of a worker that ran only this run.
    assert worker_figures[("etl_rows_written_total", orders)] == final.rows_written
    assert worker_figures[("etl_rows_rejected_total", orders)] == final.rows_rejected
    assert worker_figures[("etl_rows_read_total", orders)] == 3_000
    assert worker_figures[("etl_chunk_duration_seconds_count", orders)] == len(chunks) == 6
    # The API's figures come from the ledger and the broker.
    runs_succeeded = api_figures[
        ("etl_runs", (("pipeline", "orders_daily"), ("state", "succeeded")))
    ]
    assert runs_succeeded >= 1
    last = api_figures[("etl_last_success_timestamp_seconds", orders)]
    assert last >= final.finished_at.timestamp() - 0.001  # type: ignore[union-attr]
    assert api_figures[("etl_broker_up", ())] == 1
    assert api_figures[("etl_queue_consumers", (("queue", "etl.transform"),))] == 1
    assert ("etl_queue_messages", (("queue", "etl.transform.dlq"),)) in api_figures
