"""``/dashboard``: a read-only view of runs, chunks, pipelines and dead letters, rendered
on the server (Jinja, plain HTML and CSS, no JavaScript, no build step).

Browsers cannot add a bearer header, so these pages also accept HTTP Basic with any user
name and a token as the password (a read-only token is enough); see api.auth.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, current_app, render_template

from api.context import api_services
from etl.adapters.ledger import Ledger
from etl.domain.errors import RunNotFound
from etl.domain.runs import Chunk, ChunkState, Run
from etl.pipelines import PIPELINES, explain_run, interval_name

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")
# Every page names a run's interval as its pipeline does: a date, or a finer one's start;
# a run's page says what it read, and why it read nothing when it did.
bp.add_app_template_global(interval_name)
bp.add_app_template_global(explain_run)


def _ledger() -> Ledger:
    ledger: Ledger = api_services().ledger
    return ledger


def duration(run: Run | Chunk) -> str:
    """``12.3 s`` from start to finish, or to now while running."""
    if run.started_at is None:
        return ""
    end = run.finished_at or datetime.now(UTC)
    seconds = (end - run.started_at).total_seconds()
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def timeline(run: Run, chunks: list[Chunk]) -> list[dict[str, Any]]:
    """Each chunk's bar: where it starts and how wide it is, in percent of the run."""
    if run.started_at is None:
        return []
    end = run.finished_at or max(
        (c.finished_at or c.started_at for c in chunks if c.started_at), default=run.started_at
    )
    span = max((end - run.started_at).total_seconds(), 0.001)
    bars = []
    for chunk in chunks:
        if chunk.started_at is None:
            bars.append({"chunk": chunk, "left": 0.0, "width": 0.0})
            continue
        finish = chunk.finished_at or end
        left = (chunk.started_at - run.started_at).total_seconds() / span * 100
        width = max((finish - chunk.started_at).total_seconds() / span * 100, 0.5)
        bars.append({"chunk": chunk, "left": round(left, 2), "width": round(width, 2)})
    return bars


@bp.get("/")
def runs() -> str:
    """The most recent runs."""
    return render_template(
        "dashboard/runs.html", runs=_ledger().list_runs(limit=100), duration=duration
    )


@bp.get("/runs/<run_id>")
def run(run_id: str) -> str:
    """One run: its figures, its chunks on a timeline, and where its manifest is."""
    ledger = _ledger()
    try:
        found = ledger.get_run(run_id)
    except RunNotFound:
        abort(404)
    chunks = ledger.get_chunks(run_id)
    settings = current_app.extensions["etl_settings"]
    manifest = f"s3://{settings.s3_bucket}/{found.manifest_key}" if found.manifest_key else None
    done = sum(1 for chunk in chunks if chunk.state is ChunkState.DONE)
    return render_template(
        "dashboard/run.html",
        run=found,
        bars=timeline(found, chunks),
        done=done,
        manifest=manifest,
        duration=duration,
    )


@bp.get("/pipelines")
def pipelines() -> str:
    """The pipelines, their schedules and their next and last runs."""
    ledger = _ledger()
    moment = datetime.now(UTC)
    rows = [
        {
            "pipeline": pipeline,
            "next": pipeline.next_run_at(moment),
            "next_interval": pipeline.next_interval(moment),
            "last": ledger.latest_run(pipeline.name),
        }
        for pipeline in sorted(PIPELINES.values(), key=lambda p: p.name)
    ]
    return render_template("dashboard/pipelines.html", rows=rows)


@bp.get("/dead-letters")
def dead_letters() -> str:
    """Parked messages as the ledger has them (``etl dlq list`` syncs from the broker)."""
    return render_template("dashboard/dead_letters.html", letters=_ledger().list_dead_letters())
