"""The alert rules parse, cover what an operator must hear about, and use only metrics
that the code (or Prometheus itself) exports; promtool (Debian's prometheus package,
which .ci/run installs) checks the rules and the config and runs the rules' own tests,
infra/prometheus/alerts_test.yml."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from etl import metrics
from etl.metrics import LedgerCollector

from support import require_service

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra/prometheus/alerts.yml"


class _EmptyLedger:
    def run_counts(self) -> dict[object, int]:
        return {}

    def last_successes(self) -> dict[str, object]:
        return {}

    def dead_letter_counts(self) -> dict[str, int]:
        return {}


def exported_names() -> set[str]:
    """Every series name the workers and the API can export."""
    names = set()
    for metric in vars(metrics).values():
        describe = getattr(metric, "describe", None)
        if callable(describe) and hasattr(metric, "_name"):
            for family in describe():
                names |= {family.name, f"{family.name}_total", f"{family.name}_count"}
                names |= {f"{family.name}_bucket", f"{family.name}_sum"}
    registry = CollectorRegistry()
    registry.register(LedgerCollector(_EmptyLedger(), dict))  # type: ignore[arg-type]
    for family in registry.collect():
        names.add(family.name)
    return names


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_alerts_cover_staleness_failures_dead_letters_backlog_and_consumers() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {
        "EtlPipelineStale",
        "EtlRunFailed",
        "EtlDeadLettersPresent",
        "EtlQueueBacklogGrowing",
        "EtlNoConsumers",
    } <= names
    for rule in rules():
        assert rule["expr"] and rule["labels"]["severity"] in {"page", "ticket"}  # type: ignore[index]
        assert rule["annotations"]["summary"]  # type: ignore[index]


def test_every_metric_an_alert_uses_is_exported() -> None:
    exported = exported_names() | {"up"}
    for rule in rules():
        expr = str(rule["expr"])
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        used = set(re.findall(r"\b(etl_[a-z_]+|up)\b", without_strings))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


def test_prometheus_loads_the_rules_file() -> None:
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        require_service("promtool", "not on PATH (apt-get install prometheus)")
    assert found is not None
    return found


@pytest.mark.parametrize(
    "check",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]],
    ids=["rules are valid PromQL", "rules fire when they should and only then"],
)
def test_promtool_passes_the_rules(check: list[str]) -> None:
    result = subprocess.run(
        [promtool(), *check], cwd=RULES.parent, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_passes_the_config(tmp_path: Path) -> None:
    # The config names the rules and the token where compose mounts them; point it at
    # ours and at a stand-in token.
    token = tmp_path / "api_read_token"
    token.write_text("a-read-only-token")
    config = (ROOT / "infra/prometheus/prometheus.yml").read_text()
    local = tmp_path / "prometheus.yml"
    local.write_text(
        config.replace("/etc/prometheus/alerts.yml", str(RULES)).replace(
            "/run/secrets/api_read_token", str(token)
        )
    )
    result = subprocess.run(
        [promtool(), "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dead_letter_state_is_exported_zeros_included() -> None:
    registry = CollectorRegistry()
    registry.register(LedgerCollector(_EmptyLedger(), dict))  # type: ignore[arg-type]
    samples = {
        sample.labels["state"]: sample.value
        for family in registry.collect()
        if family.name == "etl_dead_letters"
        for sample in family.samples
    }
    assert samples == {"dead": 0, "replayed": 0, "purged": 0, "resolved": 0}
