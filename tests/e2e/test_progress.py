"""`etl run --wait` shows a live bar on a terminal (a pty) and plain lines in a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings, settings_env

from support import ChildProcess

pytestmark = pytest.mark.e2e

# slow_orders (tests/fault_pipelines.py) waits after each batch: a run of the fast
# orders_daily can end between two polls, and this is about what is seen while it runs.
RUN = ["run", "slow_orders", "--param", "chunk_size=500", "--wait", "--timeout", "120"]
SLOW = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "ETL_TEST_SLOW_BATCH_S": "0.4"}


@pytest.fixture(scope="module")
def progress_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"pipeline_modules": "fault_pipelines"})


@pytest.fixture(scope="module")
def worker(
    progress_settings: Settings, services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChildProcess]:
    seed_orders(services.source_engine, 4_000)
    started = ChildProcess.etl(
        ["worker", "--concurrency", "2"],
        progress_settings,
        tmp_path_factory.mktemp("progress") / "worker.log",
        extra_env=SLOW,
    )
    try:
        started.wait_for_log("ready.")
        yield started
    finally:
        started.stop()


def test_on_a_terminal_the_progress_is_one_line_redrawn(
    worker: ChildProcess, progress_settings: Settings
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "etl", *RUN, "--date", "2024-04-01"],
        env={**os.environ, **settings_env(progress_settings), **SLOW},
        stdin=terminal, stdout=terminal, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    text = output.decode()
    assert "\r\x1b[2K" in text  # redrawn in place
    assert "[########################] 8/8 chunks | 4,000 rows" in text
    assert " rows/s" in text and "state     succeeded" in text


def test_in_a_pipe_the_progress_is_plain_lines(
    worker: ChildProcess, progress_settings: Settings, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "etl", *RUN, "--date", "2024-04-02"],
        env={**os.environ, **settings_env(progress_settings), **SLOW},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\r" not in done.stdout and "\x1b" not in done.stdout
    progress = [line for line in done.stdout.splitlines() if " chunks | " in line]
    # a line per change of the counts, ending with every chunk done
    assert len(progress) == len({line.split(" | ")[0] for line in progress}) >= 2
    assert progress[-1].startswith("succeeded [########################] 8/8 chunks")
    assert progress[-1].split(" | ")[1] == "4,000 rows"
