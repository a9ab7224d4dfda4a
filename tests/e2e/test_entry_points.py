"""The long-running entry points start on the real services and stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from etl.config import Settings, settings_env

from support import ChildProcess

pytestmark = pytest.mark.e2e


def test_beat_starts_with_the_nightly_schedule_and_stops_on_sigterm(
    service_settings: Settings, tmp_path: Path
) -> None:
    beat = ChildProcess.etl(
        ["beat"], service_settings.model_copy(update={"log_level": "DEBUG"}), tmp_path / "beat.log"
    )
    try:
        beat.wait_for_log("beat: Starting", timeout_s=30)
        beat.wait_for_log("entry pipeline:orders_daily", timeout_s=30)
        beat.wait_for_log("is now the leader", timeout_s=30)
        beat.process.send_signal(signal.SIGTERM)
        assert beat.wait_for_exit(timeout_s=20) == 0, beat.log()
    finally:
        beat.stop()


def _demo(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", "demo", "--rows", "3000", *args],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_demo_runs_on_the_configured_services_with_its_own_worker(
    service_settings: Settings,
) -> None:
    completed = _demo(service_settings.model_copy(update={"s3_endpoint_url": ""}))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "mode      services (RabbitMQ, PostgreSQL, Redis; S3 at http://127.0.0.1:" in out
    assert "succeeded" in out and "3,000 read of 3,000 seeded" in out
    assert "manifest  s3://" in out


def test_the_demo_says_in_one_line_what_is_down_and_runs_embedded(
    service_settings: Settings,
) -> None:
    down = service_settings.model_copy(update={"broker_url": "amqp://guest:secret@127.0.0.1:1//"})
    completed = _demo(down)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    first_line = completed.stdout.splitlines()[0]
    assert first_line.startswith("RabbitMQ at amqp://guest:***@127.0.0.1:1// is unreachable")
    assert "running embedded" in first_line and "secret" not in completed.stdout
    assert "mode      embedded" in completed.stdout and "succeeded" in completed.stdout
