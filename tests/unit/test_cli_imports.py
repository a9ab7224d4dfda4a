"""The ``etl`` command's import does not load prometheus_client: ``etl worker`` sets
PROMETHEUS_MULTIPROC_DIR first, and a metric made before that counts only in the process
that made it (the worker's /metrics would never show it)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_loads_no_metrics() -> None:
    check = "import sys, etl.cli; print(sorted(m for m in sys.modules if 'prometheus' in m))"
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()

    assert loaded == "[]"
