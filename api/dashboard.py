"""``/dashboard``: runs, chunks, pipelines and dead letters, rendered on the server
(Jinja, plain HTML and CSS, inline SVG charts, no JavaScript, no build step).

Browsers cannot add a bearer header, so these pages also accept HTTP Basic with any user
name and a token as the password (a read-only token is enough to look); see api.auth.
A full token also gets the actions (trigger, retry, cancel, replay): plain HTML forms
POSTing here, each checked against cross-site requests (api.dashboard_forms), calling
the same services as the JSON API. Pages refresh themselves (``<meta http-equiv=refresh>``)
unless asked not to (``?refresh=0``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from api.context import api_services
from api.dashboard_forms import (
    CSRF_FIELD,
    browser_secret,
    cross_site_refusal,
    form_key,
    form_token,
    new_browser_secret,
    set_browser_secret,
)
from api.dashboard_render import cell_label, duration, grid, run_charts, timeline
from api.errors import ApiError
from api.runs import decode_cursor, encode_cursor
from etl.adapters.ledger import Ledger
from etl.domain.dead_letters import DeadLetterState
from etl.domain.errors import EtlError, RunNotFound
from etl.domain.failures import split_failure
from etl.domain.runs import TERMINAL_RUN_STATES, ChunkState, RunState, Trigger
from etl.domain.schedules import in_words
from etl.pipelines import PIPELINES, explain_run, interval_name

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")
# Every page names a run's interval as its pipeline does: a date, or a finer one's start;
# a run's page says what it read, and why it read nothing when it did.
bp.add_app_template_global(interval_name)
bp.add_app_template_global(explain_run)
bp.add_app_template_global(in_words, "schedule_in_words")
bp.add_app_template_global(duration)
bp.add_app_template_global(cell_label)

REFRESH_SECONDS = 30
PAGE_SIZE = 50
GRID_COLUMNS = 14


def _ledger() -> Ledger:
    ledger: Ledger = api_services().ledger
    return ledger


def _key() -> bytes:
    settings = current_app.extensions["etl_settings"]
    return form_key(settings.api_token.get_secret_value())


@bp.before_request
def _refuse_cross_site_posts() -> None:
    if request.method == "POST":
        why = cross_site_refusal(request, _key())
        if why is not None:
            abort(Response(f"refused: {why}\n", 403, mimetype="text/plain"))


@bp.before_request
def _browser_secret() -> None:
    g.etl_browser_secret = browser_secret(request) or new_browser_secret()


@bp.after_request
def _keep_browser_secret(response: BaseResponse) -> BaseResponse:
    secret = g.get("etl_browser_secret")  # unset when the request was refused first
    if secret is not None and browser_secret(request) != secret:
        set_browser_secret(response, secret, secure=request.is_secure)
    return response


@bp.app_template_global()
def csrf_field() -> str:
    """The hidden value each form carries (rendered with ``| safe`` in the templates)."""
    token = form_token(_key(), g.etl_browser_secret)
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{token}">'


@bp.app_template_global()
def can_write() -> bool:
    """Whether this request's token may act (a full token, not a read-only one)."""
    return bool(g.get("etl_can_write"))


@bp.app_template_global()
def refresh_seconds() -> int | None:
    """The page's auto-refresh, or None with ``?refresh=0``."""
    return None if request.args.get("refresh") == "0" else REFRESH_SECONDS


@bp.app_template_global()
def with_args(**changes: Any) -> str:
    """This page's URL with some query arguments changed (None removes one)."""
    args = {k: v for k, v in request.args.items() if k not in changes}
    args.update({k: v for k, v in changes.items() if v is not None})
    return request.path + ("?" + urlencode(args) if args else "")


def _choice(name: str, kind: type[RunState] | type[Trigger]) -> Any:
    value = request.args.get(name) or None
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        abort(400, f"{name} must be one of: {', '.join(kind)}")


def _date(name: str) -> date | None:
    value = request.args.get(name) or None
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        abort(400, f"{name} must be a date (YYYY-MM-DD)")


@bp.get("/")
def runs() -> BaseResponse:
    """The grid of pipelines by interval, and the runs, filtered and a page at a time."""
    ledger = _ledger()
    pipeline = request.args.get("pipeline") or None
    state = _choice("state", RunState)
    trigger = _choice("trigger", Trigger)
    date_from, date_to = _date("from"), _date("to")
    cursor = request.args.get("cursor") or None
    try:
        after = decode_cursor(cursor) if cursor else None
    except ApiError:
        abort(400, "not a page cursor")
    page = ledger.list_runs(
        pipeline=pipeline,
        state=state,
        trigger=trigger,
        date_from=date_from,
        date_to=date_to,
        after=after,
        limit=PAGE_SIZE,
    )
    next_cursor = encode_cursor(page[-1]) if len(page) == PAGE_SIZE else None
    recent = ledger.list_runs(
        pipeline=pipeline, date_from=date_from, date_to=date_to, limit=GRID_COLUMNS * 40
    )
    names = [pipeline] if pipeline else sorted(PIPELINES)
    rows = grid(recent, names, GRID_COLUMNS)
    return make_response(
        render_template(
            "dashboard/runs.html",
            runs=page,
            grid=rows,
            next_cursor=next_cursor,
            first_page=cursor is None,
            pipelines=sorted({*PIPELINES, *(row.pipeline for row in rows)}),
            states=list(RunState),
            triggers=list(Trigger),
            filters={
                "pipeline": pipeline or "",
                "state": state.value if state else "",
                "trigger": trigger.value if trigger else "",
                "from": date_from.isoformat() if date_from else "",
                "to": date_to.isoformat() if date_to else "",
            },
        )
    )


@bp.get("/runs/<run_id>")
def run(run_id: str) -> str:
    """One run: its figures, its chunks on a timed axis, its failure and its manifest."""
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
        line=timeline(found, chunks),
        done=done,
        manifest=manifest,
        letters=ledger.list_dead_letters(state=None, run_id=run_id),
        cancellable=found.state not in TERMINAL_RUN_STATES,
        # A plan or commit failure's traceback, if it was recorded with the run's reason.
        reason=split_failure(found.reason),
        message=request.args.get("done"),
    )


@bp.get("/pipelines")
def pipelines() -> str:
    """The pipelines, their schedules in words and their next and last runs."""
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
    return render_template("dashboard/pipelines.html", rows=rows, message=request.args.get("done"))


@bp.get("/pipelines/<name>")
def pipeline(name: str) -> str:
    """One pipeline: charts of its runs' durations and rows over time."""
    runs = list(reversed(_ledger().list_runs(pipeline=name, limit=60)))
    if name not in PIPELINES and not runs:
        abort(404)
    return render_template(
        "dashboard/pipeline.html",
        name=name,
        definition=PIPELINES.get(name),
        charts=run_charts(runs),
    )


@bp.get("/dead-letters")
def dead_letters() -> str:
    """Parked messages as the ledger has them (``etl dlq list`` syncs from the broker);
    ``?all=1`` adds those replayed, purged or resolved."""
    state = None if request.args.get("all") else DeadLetterState.DEAD
    return render_template(
        "dashboard/dead_letters.html",
        letters=_ledger().list_dead_letters(state=state),
        message=request.args.get("done"),
    )


# Actions: a full token (api.create_app refuses a read-only one a POST), and a form of ours.


def _back(endpoint: str, message: str, **values: Any) -> BaseResponse:
    return redirect(url_for(endpoint, **values, done=message), 303)


def _refused(exc: EtlError) -> BaseResponse:
    status = {"not_found": 404, "conflict": 409, "unavailable": 503}.get(exc.kind, 400)
    return Response(f"not done: {exc}\n", status, mimetype="text/plain")


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str) -> BaseResponse:
    """Retry a failed run (RunService.retry_run, as POST /api/v1/runs/<id>/retry)."""
    try:
        api_services().run_service.retry_run(run_id)
    except EtlError as exc:
        return _refused(exc)
    return _back("dashboard.run", "retry sent", run_id=run_id)


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str) -> BaseResponse:
    """Cancel a run (RunService.cancel_run, as POST /api/v1/runs/<id>/cancel)."""
    try:
        api_services().run_service.cancel_run(run_id)
    except EtlError as exc:
        return _refused(exc)
    return _back("dashboard.run", "cancelled", run_id=run_id)


@bp.post("/runs")
def trigger_run() -> BaseResponse:
    """Start a run of a pipeline (RunService.start_run, as POST /api/v1/runs); an empty
    interval means the last one that has ended."""
    name = request.form.get("pipeline", "")
    interval = request.form.get("interval", "").strip() or None
    if name not in PIPELINES:
        return Response("not done: no such pipeline\n", 400, mimetype="text/plain")
    try:
        started, _ = api_services().run_service.start_run(name, interval=interval)
    except EtlError as exc:
        return _refused(exc)
    except ValueError as exc:  # an interval this pipeline does not have
        return Response(f"not done: {exc}\n", 400, mimetype="text/plain")
    return _back("dashboard.run", "run started", run_id=started.id)


@bp.post("/dead-letters/<int:dead_letter_id>/replay")
def replay_dead_letter(dead_letter_id: int) -> BaseResponse:
    """Replay a dead letter once (DeadLetterService.replay, as the API's replay)."""
    try:
        outcome = api_services().dead_letters.replay(dead_letter_id)
    except EtlError as exc:
        return _refused(exc)
    return _back("dashboard.dead_letters", outcome.action)
