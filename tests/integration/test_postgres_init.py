"""infra/postgres/initdb on the real PostgreSQL: the ledger's database and its own role."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from deploy_support import PROJECT_ROOT
from support import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration

INIT_SCRIPT = PROJECT_ROOT / "infra/postgres/initdb/10-ledger.sh"


@pytest.fixture
def ledger_names(postgres_url: str) -> Iterator[dict[str, str]]:
    """Names for a ledger database and role of this test's own; both dropped at the end."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "LEDGER_DB_NAME": f"etl_init_{tag}",
        "LEDGER_DB_USER": f"etl_init_{tag}_owner",
        "LEDGER_DB_PASSWORD": f"pw'{tag}",  # a quote, to prove it is passed as data
    }
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        yield names
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{names["LEDGER_DB_NAME"]}" WITH (FORCE)'))
            for role in (names["LEDGER_DB_USER"], f"etl_init_{tag}_other"):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def run_init_script(names: dict[str, str]) -> subprocess.CompletedProcess[str]:
    admin = make_url(POSTGRES_ADMIN_URL)
    env = {
        **os.environ,
        **names,
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
    }
    if admin.password:
        env["PGPASSWORD"] = admin.password
    return subprocess.run(
        ["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


def url_as(role: str, database: str, password: str = "x") -> str:
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(username=role, password=password, database=database)
        .render_as_string(hide_password=False)
    )


def test_the_ledger_role_owns_its_database_and_can_migrate_it(
    ledger_names: dict[str, str],
) -> None:
    created = run_init_script(ledger_names)
    assert created.returncode == 0, created.stderr
    database, role = ledger_names["LEDGER_DB_NAME"], ledger_names["LEDGER_DB_USER"]

    migrated = subprocess.run(
        [sys.executable, "-m", "etl", "db", "upgrade"],
        env={**os.environ, "ETL_DATABASE_URL": url_as(role, database)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert migrated.returncode == 0, migrated.stderr
    admin = create_engine(url_as("postgres", database, ""), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            owners = dict(
                conn.execute(
                    text("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
                ).all()
            )
            attributes = conn.execute(
                text(
                    "SELECT rolsuper, rolcreatedb, rolcreaterole, rolpassword IS NOT NULL "
                    "FROM pg_authid WHERE rolname = :role"
                ),
                {"role": role},
            ).one()
    finally:
        admin.dispose()
    assert set(owners) >= {"etl_runs", "etl_chunks", "etl_schema_version"}
    assert set(owners.values()) == {role}
    assert tuple(attributes) == (False, False, False, True)


def test_no_other_role_may_connect_to_the_ledger(ledger_names: dict[str, str]) -> None:
    assert run_init_script(ledger_names).returncode == 0
    other = ledger_names["LEDGER_DB_NAME"] + "_other"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{other}" LOGIN'))
    finally:
        admin.dispose()

    intruder = create_engine(url_as(other, ledger_names["LEDGER_DB_NAME"]))
    try:
        with pytest.raises(OperationalError, match="permission denied for database"):
            intruder.connect()
    finally:
        intruder.dispose()


def test_the_script_refuses_to_run_without_a_password(ledger_names: dict[str, str]) -> None:
    names = {**ledger_names, "LEDGER_DB_PASSWORD": ""}

    refused = run_init_script(names)

    assert refused.returncode != 0
    assert "LEDGER_DB_PASSWORD" in refused.stderr
