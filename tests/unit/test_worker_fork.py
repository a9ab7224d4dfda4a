"""What a worker's pool process shares with the main process it forks from: the modules
loaded before the fork stay on the pages the fork shared, even once the pool process's
garbage collector has walked its objects (Linux: read from /proc)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

FORK_AFTER_WORKER_INIT = textwrap.dedent(
    """
    import gc, os
    from celery.signals import worker_init
    import etl.worker.tasks  # connects the worker's signal handlers

    worker_init.send(sender=None)  # what `etl worker` runs before its pool forks

    def private_dirty_kb():
        with open(f"/proc/{os.getpid()}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])

    pid = os.fork()
    if pid == 0:
        before = private_dirty_kb()
        gc.collect()  # a pool process's collections walk every object it can see
        print(private_dirty_kb() - before)
        os._exit(0)
    os.waitpid(pid, 0)
    """
)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_a_pool_processs_collections_leave_the_forked_modules_shared() -> None:
    # Without gc.freeze() in worker_init, this collection copied about 44 MB of the
    # libraries' pages into the pool process, and took 140 ms: in every pool process, in
    # a fresh worker's first run.
    forked = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_WORKER_INIT],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    copied_kb = int(forked.stdout.split()[-1])
    assert copied_kb < 10_000, f"{copied_kb} kB copied by the pool process's collection"
