"""Credentials never leak: not in CLI errors, `etl status` output or worker logs; and the
TLS settings reach the drivers (the local servers have no TLS, so a required TLS
connection fails, naming TLS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import Trigger
from etl.worker.app import make_celery

from builders import utc_day
from support import ChildProcess, rabbitmqctl, run_etl, scratch_vhost, wait_until

DB_PASSWORD = "Db-s3cret-7f3a"  # trust auth here: the password is carried, never checked
BROKER_PASSWORD = "Mq-s3cret-91bc"


@pytest.fixture
def with_db_password(service_settings: Settings) -> Settings:
    url = make_url(service_settings.database_url).set(password=DB_PASSWORD)
    return service_settings.model_copy(
        update={"database_url": url.render_as_string(hide_password=False)}
    )


def test_status_and_runs_show_no_credentials(
    with_db_password: Settings, services: Services
) -> None:
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(__import__("datetime").date(2024, 1, 1)),
        logical_date=__import__("datetime").date(2024, 1, 1),
        trigger=Trigger.MANUAL,
        params={},
    )
    for args in (["status", run.id], ["status", run.id, "--json"], ["runs"], ["pipelines"]):
        done = run_etl(with_db_password, *args)
        assert done.returncode == 0, done.stderr
        assert DB_PASSWORD not in done.stdout + done.stderr
    services.ledger.fail_run(run.id, "test over")


@pytest.mark.parametrize("args", [["db", "upgrade"], ["runs"], ["seed", "--rows", "10"]])
def test_a_database_that_refuses_tls_is_one_error_line_without_the_password(
    with_db_password: Settings, args: list[str]
) -> None:
    done = run_etl(with_db_password, *args, ETL_DATABASE_SSLMODE="require")

    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert "SSL" in line and "***" in line
    assert DB_PASSWORD not in done.stdout + done.stderr


def test_broker_tls_settings_reach_celery_and_refuse_an_unverifiable_setup(
    service_settings: Settings, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    tls = service_settings.model_copy(
        update={"broker_url": "amqps://guest:guest@127.0.0.1:5671//", "broker_ssl_ca_file": str(ca)}
    )
    app = make_celery(tls)
    assert app.conf.broker_use_ssl["ca_certs"] == str(ca)
    assert app.conf.broker_use_ssl["cert_reqs"] == __import__("ssl").CERT_REQUIRED
    refused = run_etl(service_settings, "runs", ETL_BROKER_SSL_CA_FILE=str(ca))
    assert refused.returncode == 2 and "ETL_BROKER_SSL_CA_FILE" in refused.stderr


def test_a_worker_never_logs_its_broker_password(
    service_settings: Settings, services: Services, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    # (services: the session's bucket exists, or the worker refuses to start)
    user = f"etl-secret-{rabbitmq_vhost[-8:]}"
    with scratch_vhost(f"{rabbitmq_vhost}-creds") as vhost:
        rabbitmqctl("add_user", user, BROKER_PASSWORD)
        try:
            rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            broker = f"amqp://{user}:{BROKER_PASSWORD}@127.0.0.1:5672/{vhost}"
            settings = service_settings.model_copy(update={"broker_url": broker})
            worker = ChildProcess.etl(
                ["worker", "--concurrency", "1"], settings, tmp_path / "w.log"
            )
            try:
                worker.wait_for_log("ready.")
                rabbitmqctl("close_all_connections", "-p", vhost, "test: reconnect")
                # connection errors and the reconnection are logged too
                wait_until(
                    lambda: worker.log().count("Connected to amqp://") >= 2,
                    timeout_s=60,
                    what="the worker to reconnect",
                )
            finally:
                worker.stop()
            log = worker.log_path.read_text()
            assert user in log  # the URL is logged, with the password masked
            assert BROKER_PASSWORD not in log
        finally:
            rabbitmqctl("delete_user", user)
