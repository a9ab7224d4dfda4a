"""The alert rules parse, cover what an operator must hear about, and use only metrics
that the code (or Prometheus itself) exports. promtool is not installed here, so the
rules are checked by parsing them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from etl import metrics
from etl.metrics import LedgerCollector

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
