"""The dashboard's grid, filters and paging, timeline, schedule in words, charts, and its
actions: only with a full token, only from a form of ours (a cross-site POST is 403)."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr

from api.dashboard_render import cell_label, grid, run_charts, timeline
from etl.adapters.ledger import Ledger
from etl.domain.failures import failure_text
from etl.domain.runs import Chunk, ChunkState, RunState, Trigger

from builders import api_app, failed_planned_run, new_run, run_in_state
from fakes import RecordingEnqueue


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


FULL, READER = basic("full"), basic("reader")


@pytest.fixture
def enqueue() -> RecordingEnqueue:
    return RecordingEnqueue()


@pytest.fixture
def client(ledger: Ledger, enqueue: RecordingEnqueue) -> FlaskClient:
    app = api_app(ledger, enqueue, api_token=SecretStr("full"), api_read_token=SecretStr("reader"))
    return app.test_client()


def page(client: FlaskClient, url: str, auth: dict[str, str] = READER) -> str:
    response = client.get(url, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "no form on the page"
    return found.group(1)


# -- the timeline ------------------------------------------------------------------------

T0 = datetime(2026, 5, 5, 2, 0, tzinfo=UTC)


def chunk(index: int, start: float | None, end: float | None, state: ChunkState) -> Chunk:
    return Chunk(
        "r", index, index * 100, index * 100 + 100, state,
        started_at=T0 + timedelta(seconds=start) if start is not None else None,
        finished_at=T0 + timedelta(seconds=end) if end is not None else None,
    )  # fmt: skip


def test_on_a_failed_run_every_bar_fits_and_later_chunks_have_bars(ledger: Ledger) -> None:
    run = ledger.get_run(failed_planned_run(ledger))
    # The run failed at 10 s; chunk 2 kept going until 30 s, chunk 3 still running.
    run = replace(run, started_at=T0, finished_at=T0 + timedelta(seconds=10))
    chunks = [
        chunk(0, 0, 4, ChunkState.DONE),
        chunk(1, 2, 10, ChunkState.FAILED),
        chunk(2, 5, 30, ChunkState.DONE),
        chunk(3, 8, None, ChunkState.RUNNING),
        chunk(4, None, None, ChunkState.PENDING),
    ]
    line = timeline(run, chunks, now=T0 + timedelta(seconds=60))
    assert line.seconds == 30  # the scale covers chunk 2's end, not the failure time
    for bar in line.bars:
        assert bar.left >= 0 and bar.left + bar.width <= 100 + 1e-9
    assert [b.width > 0 for b in line.bars] == [True, True, True, True, False]
    assert line.bars[2].left + line.bars[2].width == pytest.approx(100)
    assert [label for _, label in line.ticks] == [
        "+0.0 s",
        "+7.5 s",
        "+15.0 s",
        "+22.5 s",
        "+30.0 s",
    ]


def test_a_chunk_done_before_a_retry_restarted_the_run_still_fits(ledger: Ledger) -> None:
    run = replace(
        ledger.get_run(failed_planned_run(ledger)), started_at=T0 + timedelta(seconds=100)
    )
    line = timeline(run, [chunk(0, 0, 5, ChunkState.DONE), chunk(1, 101, 103, ChunkState.DONE)])
    assert line.start == T0
    assert all(b.left >= 0 and b.left + b.width <= 100 + 1e-9 for b in line.bars)


# -- pages -------------------------------------------------------------------------------


def test_the_grid_shows_each_pipelines_intervals_by_state(ledger: Ledger) -> None:
    ids = [new_run(ledger, day=date(2026, 5, d), trigger=Trigger.BACKFILL) for d in (1, 2, 3)]
    ledger.fail_run(ids[1], "boom")
    rows = grid(ledger.list_runs(limit=100), ["orders_daily", "other"], columns=2)
    assert [r.pipeline for r in rows] == ["orders_daily", "other"]
    assert [c.id for c in rows[0].cells] == ids[1:]  # the last two intervals, oldest first
    assert rows[1].cells == []


def test_the_home_page_has_the_grid_filters_paging_and_refresh(
    client: FlaskClient, ledger: Ledger
) -> None:
    for day in range(1, 61):
        new_run(ledger, day=date(2026, 3, 1) + timedelta(days=day), trigger=Trigger.BACKFILL)
    failed = run_in_state(ledger, RunState.FAILED, day=date(2026, 1, 1))
    html = page(client, "/dashboard/")
    assert 'id="grid"' in html and html.count('class="cell queued"') == 14
    assert '<meta http-equiv="refresh" content="30">' in html
    assert 'id="next-page"' in html
    assert "refresh" not in page(client, "/dashboard/?refresh=0").split("<body>")[0].lower()
    filtered = page(client, "/dashboard/?state=failed&pipeline=orders_daily")
    assert failed[:8] in filtered and filtered.count("<code>") == 1
    dated = page(client, "/dashboard/?from=2026-03-02&to=2026-03-04&trigger=backfill")
    assert dated.count("<code>") == 3
    next_url = re.search(r'id="next-page" href="([^"]+)"', html)
    assert next_url
    second = page(client, next_url.group(1).replace("&amp;", "&"))
    assert second.count("<code>") == 11 and 'id="next-page"' not in second
    assert client.get("/dashboard/?state=nope", headers=READER).status_code == 400
    assert client.get("/dashboard/?from=yesterday", headers=READER).status_code == 400
    assert client.get("/dashboard/?cursor=%%%", headers=READER).status_code == 400


def test_the_pipelines_page_says_the_schedule_in_words(client: FlaskClient) -> None:
    html = page(client, "/dashboard/pipelines")
    assert "every day at 02:00 UTC" in html and "{&#39;kind&#39;" not in html
    assert "Trigger" not in html  # a read-only token gets no buttons
    assert "<button" in page(client, "/dashboard/pipelines", FULL)


def test_a_pipelines_page_charts_its_runs_durations_and_rows(
    client: FlaskClient, ledger: Ledger
) -> None:
    for day in (1, 2, 3):
        run_in_state(ledger, RunState.SUCCEEDED, day=date(2026, 4, day))
    charts = run_charts(list(reversed(ledger.list_runs())))
    assert [len(c.columns) for c in charts] == [3, 3]
    assert all(0 <= h <= c.height for c in charts for col in c.columns for h in col.heights)
    html = page(client, "/dashboard/pipelines/orders_daily")
    assert html.count('<svg class="chart"') == 2 and html.count("<rect") == 9
    assert client.get("/dashboard/pipelines/nope", headers=READER).status_code == 404


# -- actions -----------------------------------------------------------------------------


def test_a_full_token_retries_a_failed_run_from_its_page(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)
    assert 'id="retry"' not in page(client, f"/dashboard/runs/{run_id}")  # read-only
    html = page(client, f"/dashboard/runs/{run_id}", FULL)
    response = client.post(
        f"/dashboard/runs/{run_id}/retry",
        data={"csrf_token": csrf(html)},
        headers={**FULL, "Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"},
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert ledger.get_run(run_id).state is not RunState.FAILED
    assert enqueue.calls[-1] == ("etl.plan_run", [run_id])
    assert "retry sent" in page(client, response.headers["Location"], FULL)


def test_cross_site_and_tokenless_posts_are_refused(
    client: FlaskClient, ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    run_id = failed_planned_run(ledger)
    token = csrf(page(client, f"/dashboard/runs/{run_id}", FULL))
    url = f"/dashboard/runs/{run_id}/retry"
    refusals = [
        ({**FULL, "Sec-Fetch-Site": "cross-site"}, {"csrf_token": token}),
        ({**FULL, "Origin": "http://evil.example"}, {"csrf_token": token}),
        (FULL, {}),  # no form token
        (FULL, {"csrf_token": "0" * 64}),
    ]
    for headers, form in refusals:
        assert client.post(url, data=form, headers=headers).status_code == 403
    # a read-only token may not act at all, whatever the form
    assert client.post(url, data={"csrf_token": token}, headers=READER).status_code == 403
    # without the browser's cookie the form's token is worthless
    client.delete_cookie("etl_csrf", path="/dashboard")
    assert client.post(url, data={"csrf_token": token}, headers=FULL).status_code == 403
    assert ledger.get_run(run_id).state is RunState.FAILED and enqueue.calls == []


def test_trigger_cancel_and_a_refused_action(client: FlaskClient, ledger: Ledger) -> None:
    token = csrf(page(client, "/dashboard/pipelines", FULL))
    started = client.post(
        "/dashboard/runs",
        data={"csrf_token": token, "pipeline": "orders_daily", "interval": "2026-05-01"},
        headers=FULL,
    )
    assert started.status_code == 303
    run_id = started.headers["Location"].split("/runs/")[1].split("?")[0]
    assert ledger.get_run(run_id).logical_date == date(2026, 5, 1)
    cancelled = client.post(
        f"/dashboard/runs/{run_id}/cancel", data={"csrf_token": token}, headers=FULL
    )
    assert cancelled.status_code == 303
    assert ledger.get_run(run_id).state is RunState.CANCELLED
    again = client.post(f"/dashboard/runs/{run_id}/retry", data={"csrf_token": token}, headers=FULL)
    assert again.status_code == 409 and "only a failed run" in again.get_data(as_text=True)
    bad = client.post(
        "/dashboard/runs", data={"csrf_token": token, "pipeline": "nope"}, headers=FULL
    )
    assert bad.status_code == 400


def test_origin_null_passes_only_with_a_same_origin_fetch(
    client: FlaskClient, ledger: Ledger
) -> None:
    # Chromium sends "Origin: null" under the API's "Referrer-Policy: no-referrer".
    run_id = failed_planned_run(ledger)
    token = csrf(page(client, f"/dashboard/runs/{run_id}", FULL))
    url = f"/dashboard/runs/{run_id}/retry"
    alone = client.post(url, data={"csrf_token": token}, headers={**FULL, "Origin": "null"})
    assert alone.status_code == 403
    same = {**FULL, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert client.post(url, data={"csrf_token": token}, headers=same).status_code == 303


def test_a_failed_runs_page_shows_the_recorded_traceback(
    client: FlaskClient, ledger: Ledger
) -> None:
    run_id = failed_planned_run(ledger)
    try:
        int("12,50")
    except ValueError as exc:
        ledger.fail_chunk(run_id, 1, failure_text("chunk 1 failed: ValueError: bad", exc))
    html = page(client, f"/dashboard/runs/{run_id}")
    assert 'id="traceback-1"' in html and "Traceback (most recent call last, trimmed)" in html
    assert "invalid literal for int()" in html
    assert 'id="traceback-run"' not in html  # the run's reason is one line


def test_a_grid_cell_is_labelled_by_date_or_start() -> None:
    assert cell_label("2026-05-31") == "05-31"
    assert cell_label("2026-05-31T14:00:00+00:00") == "14:00"
