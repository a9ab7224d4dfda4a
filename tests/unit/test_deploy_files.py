"""The deployment files, checked without a Docker engine: the compose file parses, every
service of ours runs a real `etl` subcommand with settings that load, no secret is in a
file, and the broker's definitions say what the app declares."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from etl.adapters.rabbitmq_definitions import (
    MissingPasswords,
    password_hash,
    password_variable,
    with_passwords,
)
from etl.adapters.topology import TRANSFORM_QUEUE, WORK_QUEUES
from etl.cli import build_parser, main
from etl.config import ENV_PREFIX, Settings, load_settings

from deploy_support import (
    COMPOSE_FILE,
    DEFINITIONS_FILE,
    PROJECT_ROOT,
    RABBITMQ_CONF,
    app_topology,
    definitions_topology,
    environment_of,
    etl_image_services,
    filled_env_example,
    interpolate,
    load_compose,
    load_definitions,
    load_env_example,
    variables_used,
)

COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = etl_image_services(COMPOSE)
LONG_RUNNING = {name for name, s in SERVICES.items() if s.get("restart") != "no"}
ONE_SHOT = set(SERVICES) - LONG_RUNNING
SETTINGS_VARIABLES = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
# Variables our services may carry besides Settings: AWS's own, and the passwords
# `etl rabbitmq-definitions` hashes.
OTHER_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a service's process would load from its compose environment."""
    for name, value in environment_of(SERVICES[service], filled_env_example()).items():
        monkeypatch.setenv(name, value)
    return load_settings()


# -- the compose file ---------------------------------------------------------------------


def test_the_stack_has_every_part_the_deployment_needs() -> None:
    assert {
        "postgres",
        "redis",
        "rabbitmq",
        "rabbitmq-definitions",
        "minio",
        "minio-init",
        "migrate",
        "worker-plan-commit",
        "worker-transform",
        "beat",
        "api",
        "flower",
        "prometheus",
    } <= set(SERVICES)
    assert set(OURS) == {
        "rabbitmq-definitions",
        "migrate",
        "worker-plan-commit",
        "worker-transform",
        "beat",
        "api",
    }


@pytest.mark.parametrize("name", sorted(OURS))
def test_each_of_our_services_runs_a_real_etl_subcommand(name: str) -> None:
    command = SERVICES[name]["command"]
    assert isinstance(command, list), "exec form, so no shell stands between tini and etl"

    args = build_parser().parse_args(command)

    assert callable(args.handler)
    assert args.handler.__module__.startswith("etl.cli.")


def test_transform_has_its_own_workers_and_every_queue_is_consumed_once() -> None:
    consumed: dict[str, list[str]] = {}
    for name, service in OURS.items():
        args = build_parser().parse_args(service["command"])
        if args.command == "worker":
            consumed[name] = args.queues.split(",")
    assert consumed["worker-transform"] == [TRANSFORM_QUEUE]
    assert TRANSFORM_QUEUE not in consumed["worker-plan-commit"]
    assert sorted(q for queues in consumed.values() for q in queues) == sorted(WORK_QUEUES)


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_services_set_only_settings_that_exist(name: str) -> None:
    names = set(SERVICES[name].get("environment") or {})
    if name == "rabbitmq-definitions":
        users = [user["name"] for user in load_definitions()["users"]]
        assert names == {password_variable(user) for user in users}
        return
    assert names - SETTINGS_VARIABLES - OTHER_VARIABLES == set()
    assert names & SETTINGS_VARIABLES, "a process of ours with no settings at all"


@pytest.mark.parametrize(
    ("name", "user"),
    [
        ("worker-plan-commit", "etl-worker"),
        ("worker-transform", "etl-worker"),
        ("api", "etl-api"),
        ("beat", "etl-beat"),
    ],
)
def test_each_process_loads_its_settings_and_uses_its_own_broker_user(
    monkeypatch: pytest.MonkeyPatch, name: str, user: str
) -> None:
    settings = settings_of(name, monkeypatch)

    broker = urlsplit(settings.broker_url)
    assert (broker.username, broker.hostname, broker.path) == (user, "rabbitmq", "/etl")
    assert broker.password == filled_env_example()[password_variable(user)]
    assert urlsplit(settings.result_backend).hostname == "redis"


@pytest.mark.parametrize("name", ["worker-plan-commit", "worker-transform", "api", "migrate"])
def test_processes_that_use_the_ledger_reach_the_ledger_database(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    env = filled_env_example()
    ledger = urlsplit(settings_of(name, monkeypatch).database_url)

    assert (ledger.username, ledger.hostname, ledger.path) == (
        env["LEDGER_DB_USER"],
        "postgres",
        "/" + env["LEDGER_DB_NAME"],
    )
    assert ledger.password == env["LEDGER_DB_PASSWORD"]
    postgres = environment_of(SERVICES["postgres"], env)
    assert postgres["LEDGER_DB_PASSWORD"] == ledger.password


def test_the_api_gets_its_token_and_workers_their_s3_user(monkeypatch: pytest.MonkeyPatch) -> None:
    env = filled_env_example()
    assert settings_of("api", monkeypatch).api_token.get_secret_value() == env["API_TOKEN"]
    worker = environment_of(SERVICES["worker-transform"], env)
    assert worker["AWS_ACCESS_KEY_ID"] == env["S3_ACCESS_KEY_ID"]
    minio_init = environment_of(SERVICES["minio-init"], env)
    assert minio_init["S3_ACCESS_KEY_ID"] == env["S3_ACCESS_KEY_ID"]


def test_workers_concurrency_comes_from_env_with_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings_of("worker-transform", monkeypatch).worker_concurrency == int(
        load_env_example()["TRANSFORM_CONCURRENCY"]
    )
    concurrency = SERVICES["worker-transform"]["environment"]["ETL_WORKER_CONCURRENCY"]
    assert interpolate(concurrency, {}) == "4"


def test_the_broker_settings_agree_with_the_broker_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of("worker-transform", monkeypatch)
    definitions = load_definitions()
    queue_types = {q["arguments"]["x-queue-type"] for q in definitions["queues"]}
    conf = dict(
        line.split("=", 1) for line in RABBITMQ_CONF.read_text().splitlines() if "=" in line
    )

    assert queue_types == {settings.queue_type}
    assert int(conf["consumer_timeout "].strip()) == settings.rabbitmq_consumer_timeout_s * 1000
    for name in ("api", "beat", "worker-plan-commit"):
        other = environment_of(SERVICES[name], filled_env_example())
        assert other["ETL_QUEUE_TYPE"] == settings.queue_type


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for url in re.findall(r"[a-z+0-9]+://\S+", text):
        credentials = urlsplit(url.strip("\"'")).netloc.rpartition("@")[0]
        if credentials:
            assert ":${" in credentials, f"a literal password in {url}"
    for service in SERVICES.values():
        for name, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", name):
                # Required (:?) or, for the optional consumers' user, empty by default.
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]+|:-)\}", str(value)), (name, value)


def test_every_variable_the_compose_file_reads_is_in_env_example_and_no_secret_there() -> None:
    example = load_env_example()
    assert variables_used(json.dumps(COMPOSE)) == set(example)
    secrets = {n: v for n, v in example.items() if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", n)}
    assert secrets and all(value == "" for value in secrets.values()), secrets


def test_a_missing_secret_stops_the_stack_with_its_name() -> None:
    env = filled_env_example()
    del env["RABBITMQ_PASSWORD_ETL_WORKER"]

    with pytest.raises(KeyError, match="RABBITMQ_PASSWORD_ETL_WORKER"):
        environment_of(SERVICES["worker-transform"], env)
    assert interpolate("$${HOSTNAME}", {}) == "${HOSTNAME}"


def test_dependencies_exist_and_wait_for_health_or_completion() -> None:
    for name, service in SERVICES.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no healthcheck"
            elif wanted == "service_completed_successfully":
                assert target in ONE_SHOT
            else:
                assert wanted == "service_started"


def test_every_one_shot_job_is_awaited_by_a_long_running_service() -> None:
    # `docker compose up --wait` counts an exited container as a failure unless a
    # running service depends on it with service_completed_successfully.
    awaited = {
        target
        for name in LONG_RUNNING
        for target, condition in (SERVICES[name].get("depends_on") or {}).items()
        if condition["condition"] == "service_completed_successfully"
    }
    assert {"rabbitmq-definitions", "minio-init", "migrate"} == ONE_SHOT
    assert awaited == ONE_SHOT


def test_long_running_services_have_health_checks_beat_aside() -> None:
    # Beat serves nothing to probe; compose restarts it if it exits.
    assert {name for name in LONG_RUNNING if "healthcheck" not in SERVICES[name]} == {"beat"}


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_our_containers_run_locked_down() -> None:
    for name, service in OURS.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["init"] is True, name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_every_file_the_stack_mounts_is_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


def test_the_broker_loads_the_definitions_the_one_shot_job_writes() -> None:
    job = SERVICES["rabbitmq-definitions"]
    args = build_parser().parse_args(job["command"])
    [template_mount] = [v for v in job["volumes"] if v.startswith("./infra/rabbitmq/definitions")]
    assert template_mount.split(":")[1] == args.template
    [job_volume] = [v for v in job["volumes"] if v.startswith("rabbitmq-definitions:")]
    [broker_volume] = [v for v in SERVICES["rabbitmq"]["volumes"] if v.startswith(job_volume[:21])]
    written_dir = job_volume.split(":")[1]
    loaded_dir = broker_volume.split(":")[1]
    conf = RABBITMQ_CONF.read_text()
    assert os.path.dirname(args.out) == written_dir
    assert f"load_definitions = {loaded_dir}/{os.path.basename(args.out)}" in conf
    [conf_mount] = [v for v in SERVICES["rabbitmq"]["volumes"] if "rabbitmq.conf" in v]
    assert conf_mount.split(":")[1].startswith("/etc/rabbitmq/conf.d/")


def test_flower_asks_for_a_password_and_uses_its_own_broker_user() -> None:
    env = environment_of(SERVICES["flower"], filled_env_example())
    assert env["FLOWER_BASIC_AUTH"] == filled_env_example()["FLOWER_BASIC_AUTH"]
    assert urlsplit(env["CELERY_BROKER_URL"]).username == "etl-flower"


def test_prometheus_scrapes_services_of_the_stack() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "infra/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = {
        target
        for job in jobs.values()
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    assert static == {"rabbitmq:15692", "flower:5555", "api:8000"}
    assert all(target.split(":")[0] in SERVICES for target in static)
    # the API's /metrics needs a token: the read-only one, from the compose secret
    api_token = jobs["etl-api"]["authorization"]["credentials_file"]
    assert api_token == "/run/secrets/api_read_token"
    assert "api_read_token" in SERVICES["prometheus"]["secrets"]
    assert environment_of(SERVICES["api"], filled_env_example())["ETL_API_READ_TOKEN"]
    # every worker service serves its metrics on the port the scrape asks for
    [workers] = jobs["etl-workers"]["dns_sd_configs"]
    for name in workers["names"]:
        env = environment_of(SERVICES[name], filled_env_example())
        assert env["ETL_METRICS_PORT"] == str(workers["port"])
    assert "rabbitmq_prometheus" in (PROJECT_ROOT / "infra/rabbitmq/enabled_plugins").read_text()


@pytest.mark.parametrize("policy", ["etl-readwrite.json", "etl-readonly.json"])
def test_the_s3_policies_are_limited_to_the_output_bucket(policy: str) -> None:
    document = json.loads((PROJECT_ROOT / "infra/minio" / policy).read_text())
    bucket = SERVICES["worker-transform"]["environment"]["ETL_S3_BUCKET"]
    resources = {r for s in document["Statement"] for r in s["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for s in document["Statement"] for a in s["Action"]}
    writes = {"s3:PutObject", "s3:DeleteObject"}
    assert (actions >= writes) is (policy == "etl-readwrite.json")


def test_make_up_and_down_drive_docker_compose() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert re.search(r"^up: .*## ", makefile, re.M) and re.search(r"^down: .*## ", makefile, re.M)
    assert "docker compose up -d --build --wait" in makefile
    assert "\tdocker compose down\n" in makefile


# -- the image ------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    text = (PROJECT_ROOT / "infra/Dockerfile").read_text()
    logical = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)  # join continued lines
    instructions = [line.strip() for line in logical.splitlines()]
    instructions = [line for line in instructions if line and not line.startswith("#")]
    stages: list[list[str]] = []
    for instruction in instructions:
        if instruction.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_the_image_is_multi_stage_and_runs_etl_as_an_unprivileged_user() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    [user] = [line for line in final if line.upper().startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000
    assert any(line.startswith("COPY --from=build /opt/venv") for line in final)
    assert 'ENTRYPOINT ["etl"]' in final


def test_the_final_image_installs_no_build_tools() -> None:
    final = " ".join(dockerfile_stages()[-1])
    for tool in ("apt-get install", "gcc", "build-essential", "pip install", "libpq-dev"):
        assert tool not in final, tool
    assert "pip uninstall --yes pip setuptools" in " ".join(dockerfile_stages()[0])


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*", "everything is excluded unless listed"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "etl", "api", "beat"}


# -- RabbitMQ definitions -------------------------------------------------------------------


def test_the_definitions_declare_the_topology_the_app_declares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of("worker-transform", monkeypatch)

    assert definitions_topology(load_definitions()) == app_topology(
        settings.queue_type, settings.delivery_limit
    )


def test_the_definitions_hold_no_password_and_every_user_has_permissions() -> None:
    definitions = load_definitions()
    users = {user["name"] for user in definitions["users"]}
    assert not re.search(r"password", DEFINITIONS_FILE.read_text(), re.I)
    assert {p["user"] for p in definitions["permissions"]} == users
    assert {p["vhost"] for p in definitions["permissions"]} == {"etl"}
    admins = {u["name"] for u in definitions["users"] if "administrator" in u["tags"]}
    assert admins == {"etl-admin"}


def test_a_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = b"\x01\x02\x03\x04"

    hashed = base64.b64decode(password_hash("s3cret", salt))

    assert hashed == salt + hashlib.sha256(salt + b"s3cret").digest()
    assert password_hash("s3cret") != password_hash("s3cret")  # a fresh salt each time
    with pytest.raises(ValueError, match="4 bytes"):
        password_hash("s3cret", b"\x00")


def test_filling_in_passwords_needs_one_for_every_user() -> None:
    definitions = load_definitions()
    env = {password_variable(u["name"]): "pw" for u in definitions["users"][1:]}

    with pytest.raises(MissingPasswords) as raised:
        with_passwords(definitions, env)

    assert raised.value.variables == ["RABBITMQ_PASSWORD_ETL_ADMIN"]
    assert "password_hash" not in definitions["users"][1], "the template was not changed"


def test_etl_rabbitmq_definitions_writes_hashes_never_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = [user["name"] for user in load_definitions()["users"]]
    for user in users:
        monkeypatch.setenv(password_variable(user), f"secret-of-{user}")
    out = tmp_path / "definitions.json"

    status = main(["rabbitmq-definitions", "--template", str(DEFINITIONS_FILE), "--out", str(out)])

    assert status == 0, capsys.readouterr().err
    written = out.read_text()
    assert "secret-of-" not in written
    rendered = json.loads(written)
    for user in rendered["users"]:
        hashed = base64.b64decode(user["password_hash"])
        expected = hashlib.sha256(hashed[:4] + f"secret-of-{user['name']}".encode()).digest()
        assert hashed[4:] == expected
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["definitions.json"]


def test_etl_rabbitmq_definitions_without_passwords_exits_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "definitions.json"

    argv = ["rabbitmq-definitions", "--template", str(DEFINITIONS_FILE), "--out", str(out)]
    assert main(argv) == 2

    [line] = capsys.readouterr().err.splitlines()
    assert "RABBITMQ_PASSWORD_ETL_WORKER" in line and "RABBITMQ_PASSWORD_ETL_FLOWER" in line
    assert not out.exists()
