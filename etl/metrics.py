"""Prometheus metrics.

Two sources, each where its numbers are true:

- **workers** count what they do as they do it (rows, chunk durations, retries, dead
  letters, finished runs), in prometheus_client's multi-process mode: every pool process
  writes its own file under ``PROMETHEUS_MULTIPROC_DIR`` and the worker's main process
  serves their sum on ``ETL_METRICS_PORT`` (see ``serve_worker_metrics``);
- **the API** reports what the ledger and the broker say now (runs by state, the last
  success per pipeline for staleness alerts, dead letters, queue depth and consumers), at
  ``/metrics``, read when scraped (``LedgerCollector``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from etl.domain.dead_letters import DeadLetterState
from etl.domain.schedules import latest_slot
from etl.pipelines import PIPELINES

if TYPE_CHECKING:
    from etl.domain.runs import RunState


class LedgerCounts(Protocol):
    """What the scrape reads from the ledger (``etl.adapters.ledger.Ledger`` has it)."""

    def run_counts(self) -> dict[tuple[str, RunState], int]:
        """How many runs each pipeline has in each state."""
        ...

    def last_successes(self) -> dict[str, datetime]:
        """When each pipeline's latest successful run finished."""
        ...

    def dead_letter_counts(self) -> dict[str, int]:
        """How many dead letters are in each state."""
        ...


_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900)
_RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

ROWS_READ = Counter("etl_rows_read", "Source rows read by chunk tasks", ["pipeline"])
ROWS_WRITTEN = Counter("etl_rows_written", "Rows written to parts", ["pipeline"])
ROWS_REJECTED = Counter("etl_rows_rejected", "Rows rejected by the transform", ["pipeline"])
CHUNK_DURATION = Histogram(
    "etl_chunk_duration_seconds",
    "Time to read, transform and write one chunk",
    ["pipeline"],
    buckets=_DURATION_BUCKETS,
)
RUN_DURATION = Histogram(
    "etl_run_duration_seconds",
    "Time from a run's start to its commit",
    ["pipeline"],
    buckets=_RUN_BUCKETS,
)
RUNS_FINISHED = Counter(
    "etl_runs_finished", "Runs that ended, by final state", ["pipeline", "state"]
)
TASK_RETRIES = Counter("etl_task_retries", "Transient failures retried", ["task"])
DEAD_LETTERED = Counter("etl_tasks_dead_lettered", "Task messages sent to a DLQ", ["task"])


def serve_worker_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """Serve the sum of every pool process's metrics on ``addr:port`` (the worker's main
    process). PROMETHEUS_MULTIPROC_DIR must have been set before the metrics were made."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=addr, registry=registry)


def forget_process(pid: int) -> None:
    """A pool process exited: keep its counters, drop its live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


class LedgerCollector(Collector):
    """Gauges read from the ledger and the broker at each scrape."""

    def __init__(
        self, ledger: LedgerCounts, queue_stats: Callable[[], dict[str, tuple[int, int]]]
    ) -> None:
        self.ledger = ledger
        self.queue_stats = queue_stats

    def collect(self) -> Iterator[Metric]:
        """One family per question an operator asks in the morning."""
        runs = GaugeMetricFamily(
            "etl_runs", "Runs in the ledger by pipeline and state", labels=["pipeline", "state"]
        )
        for (pipeline, state), count in sorted(self.ledger.run_counts().items()):
            runs.add_metric([pipeline, state.value], count)
        yield runs
        success = GaugeMetricFamily(
            "etl_last_success_timestamp_seconds",
            "When the pipeline's latest successful run finished (Unix time)",
            labels=["pipeline"],
        )
        for pipeline, moment in sorted(self.ledger.last_successes().items()):
            success.add_metric([pipeline], moment.timestamp())
        yield success
        owed = GaugeMetricFamily(
            "etl_pipeline_last_slot_timestamp_seconds",
            "When the pipeline's schedule last fired (Unix time): a run is owed since then",
            labels=["pipeline"],
        )
        scrape_time = datetime.now(UTC)
        for name, definition in sorted(PIPELINES.items()):
            if definition.schedule is not None:
                slot = latest_slot(definition.schedule, scrape_time)
                if slot is not None:
                    owed.add_metric([name], slot.timestamp())
        yield owed
        letters = GaugeMetricFamily(
            "etl_dead_letters", "Dead letters recorded, by state", labels=["state"]
        )
        # Every state, zeros included: "none" must not look like "not scraped".
        counts = self.ledger.dead_letter_counts()
        for letter_state in DeadLetterState:
            letters.add_metric([letter_state.value], counts.get(letter_state.value, 0))
        for other, count in sorted(counts.items()):  # a state this code does not know
            if other not in {known.value for known in DeadLetterState}:
                letters.add_metric([other], count)
        yield letters
        messages = GaugeMetricFamily(
            "etl_queue_messages", "Messages ready in a queue", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "etl_queue_consumers", "Consumers on a queue", labels=["queue"]
        )
        up = GaugeMetricFamily("etl_broker_up", "1 if the broker answered this scrape")
        try:
            stats = self.queue_stats()
        except Exception:
            stats = None
        up.add_metric([], 0 if stats is None else 1)
        for queue, (ready, count) in sorted((stats or {}).items()):
            messages.add_metric([queue], ready)
            consumers.add_metric([queue], count)
        yield messages
        yield consumers
        yield up
