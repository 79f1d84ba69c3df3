"""Prometheus exposition of the node's state, computed from the database at each scrape.

A custom ``Collector`` instead of in-process counters: the receiver, workers and web servers are
separate processes over one database, so only the rows know the node-wide totals. Counters that
come from audit rows (associations, C-STORE statuses) only grow until the audit is pruned, which
Prometheus reads as a counter reset.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from typing import TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from core.config import Settings
from node.db.engine import Database
from node.db.repositories import receiver_stats as stats


class NodeCollector(Collector):
    """Every figure hospital monitoring asks for, one database read per scrape."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with self.db.read() as session:
            receiver = stats.receiver_figures(session)
            jobs = stats.jobs_by_state(session)
            durations = stats.job_durations(session)
            deliveries = stats.deliveries_by_outcome(session)
        yield from _receiver_metrics(receiver)
        yield _labelled(
            GaugeMetricFamily, "pacsnode_jobs", "Jobs by pipeline and state (queue depth)",
            ["pipeline", "state"], jobs,
        )  # fmt: skip
        hist = HistogramMetricFamily(
            "pacsnode_job_duration_seconds",
            "Run time of finished jobs per pipeline",
            labels=["pipeline"],
        )
        for pipeline, h in sorted(durations.items()):
            buckets = [(_le(bound), n) for bound, n in h.buckets] + [("+Inf", h.count)]
            hist.add_metric([pipeline], buckets, h.total_s)
        yield hist
        yield _labelled(
            GaugeMetricFamily, "pacsnode_deliveries", "Result deliveries by destination and state",
            ["destination", "state"], deliveries,
        )  # fmt: skip
        yield from _disk_metrics(self.settings)


LabelKey = TypeVar("LabelKey", bound=tuple[str, ...])


def _labelled(
    family: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    values: Mapping[LabelKey, int],
) -> Metric:
    """One metric family with a sample per label tuple, in a stable order."""
    metric = family(name, documentation, labels=labels)
    for key, n in sorted(values.items()):
        metric.add_metric(list(key), n)
    return metric


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _receiver_metrics(figures: stats.ReceiverFigures) -> Iterator[Metric]:
    yield _labelled(
        GaugeMetricFamily, "pacsnode_instances_stored",
        "Instances held, by how they arrived (dicom, upload, orthanc, import) and calling AE",
        ["source", "calling_ae"], figures.instances,
    )  # fmt: skip
    yield _labelled(
        CounterMetricFamily, "pacsnode_associations",
        "DICOM associations served by the receiver, by calling AE",
        ["calling_ae"], {(ae,): n for ae, n in figures.associations.items()},
    )  # fmt: skip
    yield _labelled(
        CounterMetricFamily, "pacsnode_cstore_responses",
        "C-STORE answers sent by the receiver, by DIMSE status (0x0000 success)",
        ["status"], {(status,): n for status, n in figures.cstore_statuses.items()},
    )  # fmt: skip
    yield CounterMetricFamily(
        "pacsnode_instances_refused",
        "Instances refused before storage because their UIDs were invalid",
        value=figures.refused_instances,
    )


def _disk_metrics(settings: Settings) -> Iterator[Metric]:
    try:
        usage = shutil.disk_usage(settings.data_dir)
    except OSError:  # data_dir missing: report nothing rather than a wrong zero
        return
    yield GaugeMetricFamily(
        "pacsnode_data_dir_free_bytes", "Free bytes on data_dir's file system", value=usage.free
    )
    yield GaugeMetricFamily(
        "pacsnode_data_dir_size_bytes", "Size of data_dir's file system", value=usage.total
    )


def node_registry(db: Database, settings: Settings) -> CollectorRegistry:
    """A registry of the node's figures only (no process metrics of this one web worker)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(db, settings))
    return registry
