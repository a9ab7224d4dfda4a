"""The dashboard in headless Chromium (Debian's package), on a real run in the real
ledger: each page renders with its data, and the run page is saved as a screenshot
(test-artifacts/dashboard-run.png, gitignored)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from pydantic import SecretStr
from werkzeug.serving import make_server

from api import create_app
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import RunState, Trigger
from etl.service import execution as steps

from builders import utc_day
from support import require_service

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
def dashboard_url(service_settings: Settings) -> Iterator[str]:
    settings = service_settings.model_copy(update={"api_read_token": SecretStr(READ_TOKEN)})
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Chromium sends the URL's credentials as HTTP Basic, as a person would type them.
        yield f"http://viewer:{READ_TOKEN}@127.0.0.1:{server.server_port}/dashboard"
    finally:
        server.shutdown()


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
