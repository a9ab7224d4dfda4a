"""`make bench` is run by hand, not by the suite: its module must at least import, so a
move of the code it uses breaks a test instead of the next benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_module_imports() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import bench.__main__ as b; assert callable(b.main)"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert imported.returncode == 0, imported.stderr
