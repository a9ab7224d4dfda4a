"""``etl demo`` leaves nothing unreadable behind: its run goes to a database of its own,
dropped at the end, never into the configured ledger, whose outputs would otherwise
vanish with the demo's in-process S3."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import text

from etl.adapters.db import make_engine
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.errors import RunNotFound

from support import POSTGRES_ADMIN_URL, run_etl


def test_the_demo_keeps_its_run_out_of_the_configured_ledger(
    service_settings: Settings, services: Services
) -> None:
    before = services.ledger.list_runs(limit=1000)

    done = run_etl(
        service_settings.model_copy(update={"s3_endpoint_url": ""}),
        "demo",
        "--rows",
        "3000",
        "--json",
        timeout_s=300,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)  # progress went to stderr
    assert summary["run"]["state"] == "succeeded"
    assert (summary["rows_seeded"], summary["rows_read"]) == (3000, 3000)
    assert summary["mode"].startswith("services (RabbitMQ, PostgreSQL, Redis; S3 at http://")
    assert summary["outputs_kept"] is False  # moto in the demo's process
    # Recorded in a database of its own, since dropped; none of it in the configured one.
    found = re.search(r"/(etl_demo_[0-9a-f]{8}) \(the demo's own database", summary["ledger"])
    assert found is not None, summary["ledger"]
    with pytest.raises(RunNotFound):
        services.ledger.get_run(summary["run"]["id"])
    assert services.ledger.list_runs(limit=1000) == before
    admin = make_engine(POSTGRES_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :name"),
                {"name": found.group(1)},
            ).scalar_one()
    finally:
        admin.dispose()
    assert left == 0
