"""bandit finds nothing in the product code (each deliberate exception is marked where it
is, with the reason on the line above)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bandit_finds_no_issue_in_the_product_code() -> None:
    if shutil.which("bandit", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("bandit is not installed (it is in the dev extra)")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "bandit"),
            "-q",
            "-r",
            "etl",
            "api",
            "beat",
            "-f",
            "txt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
