"""End to end: worker subprocesses on the real broker, runs triggered through the CLI
and through the API (gunicorn), every part downloaded and compared with the source."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl.bootstrap import Services
from etl.config import Settings, settings_env
from etl.domain.runs import RunState
from etl.service.lifecycle import wait_for_run

from builders import with_orders
from support import (
    API_TOKEN,
    ChildProcess,
    assert_run_output_matches_source,
    etl_workers,
    wait_until,
)

pytestmark = pytest.mark.e2e

SOURCE_ROWS = 20_000


@pytest.fixture(scope="module")
def seeded(services: Services) -> Services:
    return with_orders(services, SOURCE_ROWS)


@pytest.fixture(scope="module")
def workers(
    service_settings: Settings, seeded: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ChildProcess]]:
    """Two `etl worker` processes sharing the queues."""
    with etl_workers(service_settings, tmp_path_factory.mktemp("workers")) as started:
        yield started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(
    method: str, url: str, body: dict[str, Any] | None = None, token: str | None = API_TOKEN
) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_run_through_the_cli_writes_every_row_once(
    workers: list[ChildProcess], service_settings: Settings, services: Services
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "etl", "run", "orders_daily", "--date", "2026-10-01",
         "--param", "chunk_size=2500", "--wait", "--timeout", "120"],
        env={**settings_env(service_settings), "PATH": "/usr/bin:/bin",
             "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    run_id = completed.stdout.split()[1]
    run = services.ledger.get_run(run_id)
    assert run.state is RunState.SUCCEEDED and run.chunk_count == 8
    assert "succeeded [########################] 8/8 chunks" in completed.stdout
    assert_run_output_matches_source(services, run)
    # Both workers took part: chunks were spread over the two processes.
    assert all("etl.transform_chunk" in worker.log() for worker in workers)
    # Each chunk names the worker process that made it (the dashboard's run page).
    made_by = {chunk.worker for chunk in services.ledger.get_chunks(run_id)}
    assert None not in made_by and len(made_by) == 2, made_by


def test_a_run_through_the_api_writes_every_row_once(
    workers: list[ChildProcess], service_settings: Settings, services: Services, tmp_path: Path
) -> None:
    port = _free_port()
    api = ChildProcess.etl(
        ["api", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        service_settings,
        tmp_path / "api.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _healthy(base) or not api.alive(),
            timeout_s=30,
            what="the API to answer /healthz",
        )
        assert api.alive(), api.log()

        status, refused = _request(
            "POST", f"{base}/api/v1/runs", {"pipeline": "orders_daily"}, token=None
        )
        assert status == 401 and "token" in refused["error"]

        status, created = _request(
            "POST", f"{base}/api/v1/runs",
            {"pipeline": "orders_daily", "logical_date": "2026-10-02",
             "params": {"chunk_size": 5000}},
        )  # fmt: skip
        assert status == 202, created
        run = wait_for_run(services.ledger, created["id"], timeout_s=120)
        assert run.state is RunState.SUCCEEDED, run.reason

        status, shown = _request("GET", f"{base}/api/v1/runs/{run.id}")
        assert status == 200 and shown["state"] == "succeeded"
        assert shown["chunks"] == {"total": 4, "pending": 0, "running": 0, "done": 4, "failed": 0}
        assert shown["rows_written"] + shown["rows_rejected"] == SOURCE_ROWS
        assert_run_output_matches_source(services, run)

        status, ready = _request("GET", f"{base}/readyz", token=None)
        assert status == 200, ready
        assert ready["checks"] == {"broker": "ok", "database": "ok", "bucket": "ok"}
        # every request is logged (gunicorn writes the line once the response is sent,
        # so the last one may land a moment later), and the token never is
        wait_until(
            lambda: '"GET /readyz HTTP/1.1" 200' in api.log(),
            timeout_s=10,
            what="the readyz request in the access log",
        )
        assert '"POST /api/v1/runs HTTP/1.1" 202' in api.log()
        assert API_TOKEN not in api.log()
    finally:
        api.stop()


def _healthy(base: str) -> bool:
    try:
        return _request("GET", f"{base}/healthz", token=None)[0] == 200
    except OSError:
        return False
