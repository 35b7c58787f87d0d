"""What ``GET dataflows/metrics/`` reports, read from the database at scrape time.

Values come from the database, never from counters in one process, so every server answers
the same whatever process ran the runs. :func:`read_figures` is the only place that reads
them (a bounded number of queries, whatever the size of the history); :func:`exposition`
turns them into Prometheus' text format with ``prometheus_client`` (the ``metrics`` extra),
imported only there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Min, OuterRef, Subquery
from django.utils import timezone

from django_dataflows.models import (
    ACTIVE_STATUSES,
    RATED_STATUSES,
    DataFlow,
    DataFlowRun,
    Heartbeat,
    RunStatus,
)

#: The quantiles of ``dataflows_run_duration_seconds``, with the statistics keys they read.
QUANTILES = {"0.5": "p50_duration_ms", "0.95": "p95_duration_ms"}


@dataclass
class FlowFigures:
    """One flow's figures."""

    name: str
    runs: dict[str, int] = field(default_factory=dict)
    rated: int = 0
    avg_duration_ms: float | None = None
    quantiles_ms: dict[str, float | None] = field(default_factory=dict)
    last_success_at: datetime | None = None
    overdue: bool | None = None


@dataclass
class Figures:
    """Everything a scrape reports."""

    now: datetime
    flows: list[FlowFigures]
    heartbeat_at: datetime | None
    oldest_pending_at: datetime | None


#: The quantiles of ``dataflows_run_duration_seconds`` are over the runs created since the
#: start of the previous hour (UTC): one to two hours of the hourly rollups, so a scrape
#: reads a bounded number of rows however many runs a day brings (a Prometheus summary's
#: quantiles are over a recent window; its ``_count`` and ``_sum`` over the whole history).
QUANTILE_HOURS = 2
STATUSES = tuple(RunStatus.values)


def read_figures(now: datetime | None = None) -> Figures:
    """Read every figure in a bounded number of small queries, whatever the number of runs.

    The counts per flow and status, and the count and sum of the rated durations, come
    from the rollups (each flow's whole history is one row of its level,
    :mod:`django_dataflows.rollup_levels`) and from the active runs (on the status index);
    the quantiles from the histograms of the last ``QUANTILE_HOURS`` hours (within 1 %).
    Each flow's last success is one seek on the index of successful runs. Soft-deleted
    runs are left out.
    """
    now = now or timezone.now()
    last_success = (
        DataFlowRun.objects.filter(data_flow=OuterRef("pk"), status=RunStatus.SUCCESS)
        .order_by("-pk")
        .values("ended_at")[:1]
    )
    rows = (
        DataFlow.objects.annotate(last_success_at=Subquery(last_success))
        .order_by("name")
        .values_list("pk", "name", "enabled", "alert_after", "created_at", "last_success_at")
    )
    runs = DataFlowRun.objects.not_deleted()
    # Finished runs from the rollups, active ones from the runs (the status index).
    history = runs.stats_per_flow(percentiles=False)
    window = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    recent = runs.stats_per_flow(
        since=window - timedelta(hours=QUANTILE_HOURS - 1), durations_read=0
    )
    flows = []
    for pk, name, enabled, alert_after, created_at, last_success_at in rows:
        # As DataFlow.objects.overdue(): alert_after past the last success (or creation).
        overdue_since = (
            None
            if alert_after is None
            else (last_success_at or created_at) + timedelta(seconds=alert_after)
        )
        whole: Any = history.get(pk) or {}
        figures = FlowFigures(
            name=name,
            runs={status: whole[status] for status in STATUSES if whole.get(status)},
            last_success_at=last_success_at,
            # Only a flow with alert_after can be overdue: the others have no sample.
            overdue=None if overdue_since is None else bool(enabled and overdue_since <= now),
        )
        if whole:
            figures.rated = sum(whole[status] for status in RATED_STATUSES)
            figures.avg_duration_ms = whole["avg_duration_ms"]
        flow_stats: Any = recent.get(pk)
        if flow_stats is not None:
            figures.quantiles_ms = {q: flow_stats[key] for q, key in QUANTILES.items()}
        flows.append(figures)
    heartbeat = Heartbeat.last()
    oldest_pending = DataFlowRun.objects.filter(status=RunStatus.PENDING).aggregate(
        oldest=Min("created_at")
    )["oldest"]
    return Figures(
        now=now,
        flows=flows,
        heartbeat_at=heartbeat.received_at if heartbeat else None,
        oldest_pending_at=oldest_pending,
    )


class FiguresCollector:
    """A ``prometheus_client`` collector of :class:`Figures` (read once, when created)."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        figures = self.figures
        runs = CounterMetricFamily(
            "dataflows_runs", "Runs recorded, by flow and status.", labels=["flow", "status"]
        )
        active = GaugeMetricFamily(
            "dataflows_runs_active",
            "Runs pending, in progress or paused, by flow and status.",
            labels=["flow", "status"],
        )
        durations = SummaryMetricFamily(
            "dataflows_run_duration_seconds",
            "Durations of the rated runs (success, failed, timed out), by flow: count and sum "
            "over the whole history, quantiles over the runs created since the start of the "
            "previous hour.",
            labels=["flow"],
        )
        last_success = GaugeMetricFamily(
            "dataflows_flow_last_success_timestamp_seconds",
            "When the flow's last successful run ended (Unix time).",
            labels=["flow"],
        )
        overdue = GaugeMetricFamily(
            "dataflows_flow_overdue",
            "1 when the flow has had no successful run for its alert_after.",
            labels=["flow"],
        )
        for flow in figures.flows:
            # Only the statuses a flow has runs in: 2,000 flows would otherwise send 20,000
            # zero samples (a series that is absent reads as no run in PromQL's sum()).
            for status, count in flow.runs.items():
                runs.add_metric([flow.name, status], count)
                if status in ACTIVE_STATUSES:
                    active.add_metric([flow.name, status], count)
            if flow.rated and flow.avg_duration_ms is not None:
                for quantile, value in flow.quantiles_ms.items():
                    if value is not None:
                        durations.add_sample(
                            "dataflows_run_duration_seconds",
                            {"flow": flow.name, "quantile": quantile},
                            value / 1000,
                        )
                durations.add_metric(
                    [flow.name], flow.rated, flow.avg_duration_ms * flow.rated / 1000
                )
            if flow.last_success_at is not None:
                last_success.add_metric([flow.name], flow.last_success_at.timestamp())
            if flow.overdue is not None:
                overdue.add_metric([flow.name], 1 if flow.overdue else 0)
        yield from (runs, active, durations, last_success, overdue)
        heartbeat = GaugeMetricFamily(
            "dataflows_heartbeat_last_timestamp_seconds",
            "When the last heartbeat was received (Unix time); absent before the first.",
        )
        if figures.heartbeat_at is not None:
            heartbeat.add_metric([], figures.heartbeat_at.timestamp())
        yield heartbeat
        oldest = figures.oldest_pending_at
        yield GaugeMetricFamily(
            "dataflows_pending_oldest_age_seconds",
            "Age of the oldest pending run (0 when none is pending).",
            value=max(0.0, (figures.now - oldest).total_seconds()) if oldest else 0.0,
        )


def exposition(figures: Figures) -> tuple[bytes, str]:
    """The figures in Prometheus' text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(figures))
    return generate_latest(registry), CONTENT_TYPE_LATEST
