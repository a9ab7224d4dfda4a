"""The dashboard in headless Chromium (Debian's package), on real runs in the real
ledger: each page renders with its data, and the run page is saved as a screenshot
(test-artifacts/dashboard-run.png, gitignored). Driven over the DevTools protocol
(tests/cdp.py): a backfill on the grid, a failed run's traceback and timeline geometry,
the retry button, and a cross-site form refused, each screenshot checked."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cdp import Browser
from pydantic import SecretStr
from werkzeug.serving import make_server

from api import create_app
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.failures import failure_text
from etl.domain.runs import RunState, Trigger
from etl.service import execution as steps
from etl.service.backfills import start_backfill

from builders import utc_day
from support import API_TOKEN, require_service

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
READ_TOKEN = "dashboard-reader-token"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    require_service("Chromium", None if path else "not installed (apt-get install chromium)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def dashboard_origin(service_settings: Settings) -> Iterator[str]:
    settings = service_settings.model_copy(update={"api_read_token": SecretStr(READ_TOKEN)})
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def dashboard_url(dashboard_origin: str) -> str:
    # Chromium sends the URL's credentials as HTTP Basic, as a person would type them.
    return dashboard_origin.replace("http://", f"http://viewer:{READ_TOKEN}@") + "/dashboard"


def browse(chromium: str, url: str, *extra: str) -> str:
    done = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,900", *extra, url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_dashboard_renders_a_real_run_in_chromium(
    chromium: str, dashboard_url: str, services: Services
) -> None:
    seed_orders(services.source_engine, 2_000)
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2026, 5, 5)),
        logical_date=date(2026, 5, 5),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 250},
    )
    for chunk in steps.plan_run(services, run.id) or []:
        steps.transform_chunk(services, run.id, chunk.index)
    assert steps.commit_run(services, run.id).state is RunState.SUCCEEDED

    listing = browse(chromium, f"{dashboard_url}/", "--dump-dom")
    assert run.id[:8] in listing and "succeeded" in listing
    page = browse(chromium, f"{dashboard_url}/runs/{run.id}", "--dump-dom")
    assert page.count('class="timeline"') == 8
    assert f"run={run.id}/_manifest.json" in page
    pipelines = browse(chromium, f"{dashboard_url}/pipelines", "--dump-dom")
    assert "orders_daily" in pipelines and "next run" in pipelines
    letters = browse(chromium, f"{dashboard_url}/dead-letters", "--dump-dom")
    assert "Dead letters" in letters

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dashboard-run.png"
    screenshot.unlink(missing_ok=True)
    browse(chromium, f"{dashboard_url}/runs/{run.id}", f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_token_chromium_gets_no_page(chromium: str, dashboard_url: str) -> None:
    anonymous = dashboard_url.replace(f"viewer:{READ_TOKEN}@", "")
    page = browse(chromium, f"{anonymous}/", "--dump-dom")
    assert "Recent runs" not in page


# -- the operator's actions, driven over the DevTools protocol -----------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """A PNG's width and height, from its header."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_screenshot(data: bytes) -> None:
    """A real page: a PNG of the window's size, with more than a blank page's bytes."""
    assert png_size(data) == (1400, 900)
    assert len(data) > 20_000


def evil_site(target: str) -> ThreadingHTTPServer:
    """Another site (``localhost``, not the dashboard's ``127.0.0.1``) whose page posts a
    retry to the dashboard as soon as it loads, with a token it made up."""
    page = f"""<!doctype html><form method="post" action="{target}">
<input name="csrf_token" value="{"0" * 64}"></form>
<script>document.forms[0].submit()</script>""".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def raise_bad_amount() -> None:
    int("12,50")  # a transform that cannot read an amount: a real exception, a real traceback


def failed_run(services: Services) -> str:
    """A run of 8 chunks that failed at chunk 3, as a worker records it (the chunk's error
    with its trimmed traceback, then the run through the lifecycle); chunk 4 was running
    and is failed later by the dead-letter sync, after the run's end."""
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(date(2030, 6, 1)),
        logical_date=date(2030, 6, 1),
        trigger=Trigger.MANUAL,
        params={"chunk_size": 250},
    )
    pending = steps.plan_run(services, run.id) or []
    assert len(pending) == 8
    for index in range(3):
        steps.transform_chunk(services, run.id, index)
    services.ledger.start_chunk(run.id, 3)
    services.ledger.start_chunk(run.id, 4)
    time.sleep(0.2)
    try:
        raise_bad_amount()
    except ValueError as exc:
        why = f"chunk 3 failed: {type(exc).__name__}: {exc}"
        services.ledger.fail_chunk(run.id, 3, failure_text(why, exc))
        services.runs.end_run(run.id, RunState.FAILED, why)
    time.sleep(0.3)
    services.ledger.fail_chunk(run.id, 4, "dead-lettered: chunk 4 failed: worker lost")
    return run.id


BAR_GEOMETRY = """[...document.querySelectorAll('#chunks .timeline:not(.axis)')].map(track => {
  const t = track.getBoundingClientRect(), b = track.querySelector('span').getBoundingClientRect();
  return [t.left, t.right, b.left, b.right, b.width];
})"""


def test_an_operator_sees_the_grid_a_failure_retries_it_and_a_cross_site_post_is_refused(
    chromium: str, dashboard_origin: str, services: Services, tmp_path: Path
) -> None:
    seed_orders(services.source_engine, 2_000)
    backfill, _ = start_backfill(
        services.runs, "orders_daily", start=date(2031, 1, 1), end=date(2031, 1, 3), max_active=1
    )
    assert backfill is not None
    backfill_runs = [r.id for r in services.ledger.backfill_runs(backfill.id)]
    assert len(backfill_runs) == 3
    run_id = failed_run(services)
    dashboard = f"{dashboard_origin}/dashboard"
    evil = evil_site(f"{dashboard}/runs/{run_id}/retry")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with Browser(chromium, tmp_path / "profile") as browser:
            # The browser holds the full token, as one a person typed would be cached:
            # sent with every request to the dashboard, another site's included.
            full = base64.b64encode(f"operator:{API_TOKEN}".encode()).decode()
            browser.call("Network.enable", session=True)
            browser.call(
                "Network.setExtraHTTPHeaders",
                session=True,
                headers={"Authorization": f"Basic {full}"},
            )

            # The grid shows the backfill's runs, each in its state's colour.
            browser.open(f"{dashboard}/?refresh=0")
            cells = browser.evaluate(
                "Object.fromEntries([...document.querySelectorAll('#grid a.cell')].map("
                "a => [a.dataset.run, [a.dataset.state, getComputedStyle(a).backgroundColor]]))"
            )
            for backfill_run in backfill_runs:
                assert cells[backfill_run][0] == "queued"
            assert cells[run_id] == ["failed", "rgb(214, 69, 69)"]
            check_screenshot(browser.screenshot(shots / "grid.png"))

            # The schedule in words; a pipeline's charts of durations and rows, in SVG.
            browser.open(f"{dashboard}/pipelines?refresh=0")
            assert browser.evaluate(
                "document.querySelector('tr[data-pipeline=\"orders_daily\"] td.schedule')"
                ".textContent"
            ) == ("every day at 02:00 UTC")
            browser.open(f"{dashboard}/pipelines/orders_daily?refresh=0")
            charts = browser.evaluate(
                "[...document.querySelectorAll('svg.chart')].map(svg => [svg.querySelectorAll("
                "'rect').length, svg.getBoundingClientRect().height])"
            )
            assert len(charts) == 2 and all(rects >= 1 and height > 100 for rects, height in charts)
            check_screenshot(browser.screenshot(shots / "pipeline-charts.png"))

            # A failed run's page: its traceback, and a timeline whose bars all fit.
            browser.open(f"{dashboard}/runs/{run_id}?refresh=0")
            traceback = browser.evaluate("document.querySelector('#traceback-3').textContent")
            assert traceback.startswith("Traceback")
            assert "raise_bad_amount" in traceback
            assert "ValueError: invalid literal for int() with base 10: '12,50'" in traceback
            bars = browser.evaluate(BAR_GEOMETRY)
            assert len(bars) == 8
            for track_left, track_right, bar_left, bar_right, _ in bars:
                assert track_left - 0.5 <= bar_left and bar_right <= track_right + 0.5
            assert [width > 0 for *_, width in bars] == [True] * 5 + [False] * 3
            axis = browser.evaluate("document.querySelector('#axis').textContent")
            assert "+0.0 s" in axis
            check_screenshot(browser.screenshot(shots / "failed-run.png"))

            # The retry button (a full token) retries it.
            browser.click_and_wait("#retry")
            assert services.ledger.get_run(run_id).state is RunState.QUEUED
            assert browser.evaluate("document.querySelector('#notice').textContent") == (
                "retry sent"
            )
            assert browser.evaluate("document.querySelector('#run-state').textContent") == (
                "queued"
            )
            check_screenshot(browser.screenshot(shots / "retried-run.png"))

            # Failed again; another site's form posting a retry is refused.
            services.runs.end_run(run_id, RunState.FAILED, "chunk 3 failed again")
            browser.open(f"http://localhost:{evil.server_port}/")
            if "refused" not in (browser.evaluate("document.body.innerText") or ""):
                browser.wait_for_event("Page.loadEventFired")
            refused = [
                event["params"]["response"]["status"]
                for event in browser.events
                if event.get("method") == "Network.responseReceived"
                and event["params"]["response"]["url"].endswith(f"/runs/{run_id}/retry")
            ]
            assert refused == [403]
            text = browser.evaluate("document.body.innerText")
            assert "refused: a cross-site request may not change anything" in text
            assert services.ledger.get_run(run_id).state is RunState.FAILED
            png = browser.screenshot(shots / "cross-site-refused.png")
            assert png_size(png) == (1400, 900) and len(png) > 2_000
    finally:
        evil.shutdown()
    ARTIFACTS.mkdir(exist_ok=True)
    for shot in shots.iterdir():
        shutil.copy(shot, ARTIFACTS / f"dashboard-{shot.name}")
