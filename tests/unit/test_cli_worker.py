"""What ``etl worker`` hands to Celery: task events (for Flower) from ``--events`` or
ETL_WORKER_EVENTS, and on in the compose stack's workers."""

from __future__ import annotations

import pytest

from etl.cli import build_parser
from etl.cli.processes import celery_worker_argv, worker_events
from etl.config import load_settings

from deploy_support import environment_of, filled_env_example, load_compose


def argv_for(command: list[str]) -> list[str]:
    """The Celery worker arguments ``etl <command>`` would start with."""
    args = build_parser().parse_args(command)
    settings = load_settings()
    return celery_worker_argv(args, settings, events=worker_events(args, settings))


@pytest.mark.parametrize(
    ("command", "setting", "events"),
    [
        (["worker"], None, False),  # Celery's default: off
        (["worker", "--events"], None, True),
        (["worker"], "true", True),
        (["worker", "--no-events"], "true", False),
        (["worker", "--events"], "false", True),
    ],
)
def test_task_events_come_from_the_flag_or_else_the_setting(
    monkeypatch: pytest.MonkeyPatch, command: list[str], setting: str | None, events: bool
) -> None:
    if setting is not None:
        monkeypatch.setenv("ETL_WORKER_EVENTS", setting)

    argv = argv_for(command)

    assert ("--task-events" in argv) is events
    assert argv[argv.index("worker") + 1 :][:3] == [
        "--loglevel=INFO",
        "--concurrency=2",
        "--queues=etl.plan,etl.transform,etl.commit",
    ]


def test_the_compose_stacks_workers_send_task_events_for_flower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = load_compose()["services"]
    workers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "worker"}
    assert set(workers) == {"worker-plan-commit", "worker-transform"}
    assert "flower" in services
    for name, service in workers.items():
        with monkeypatch.context() as scoped:
            for variable, value in environment_of(service, filled_env_example()).items():
                scoped.setenv(variable, value)
            assert "--task-events" in argv_for(service["command"]), name
