"""``DataFlowRun.objects.stats()`` and ``stats_per_flow()``: exact figures, bounded queries."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dataflows.exceptions import InvalidRunState
from django_dataflows.models import DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db


def reference_percentile(values: list[int], fraction: float) -> float:
    """percentile_cont by its definition: linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def make_runs(flow: Any, *specs: tuple[str, int | None]) -> list[DataFlowRun]:
    return [
        DataFlowRunFactory(data_flow=flow, status=status, duration_ms=duration)
        for status, duration in specs
    ]


def test_stats_of_no_runs() -> None:
    stats = DataFlowRun.objects.stats()
    assert stats["total"] == 0
    assert stats["success_rate"] is None
    assert stats["avg_duration_ms"] is None
    assert stats["p50_duration_ms"] is None
    assert stats["p95_duration_ms"] is None


def test_counts_per_status_and_success_rate_without_active_runs() -> None:
    flow = DataFlowFactory()
    make_runs(
        flow,
        (RunStatus.SUCCESS, 100),
        (RunStatus.SUCCESS, 200),
        (RunStatus.SUCCESS, 300),
        (RunStatus.FAILED, 400),
        (RunStatus.CANCELLED, 5),
        (RunStatus.IN_PROGRESS, None),
    )
    flow2 = DataFlowFactory()
    make_runs(flow2, (RunStatus.PENDING, None), (RunStatus.TIMED_OUT, None))
    stats = DataFlowRun.objects.stats()
    assert stats["total"] == 8
    assert (stats["success"], stats["failed"], stats["timed_out"]) == (3, 1, 1)
    assert (stats["pending"], stats["in_progress"], stats["paused"], stats["cancelled"]) == (
        1,
        1,
        0,
        1,
    )
    # 3 of the 5 rated runs: active runs are not in the denominator, cancelled not rated.
    assert stats["success_rate"] == 60.0
    # Durations of rated runs only: the cancelled run's 5 ms does not count.
    assert (stats["min_duration_ms"], stats["max_duration_ms"]) == (100, 400)
    assert stats["avg_duration_ms"] == 250.0
    assert stats["p50_duration_ms"] == 250.0
    assert stats["p95_duration_ms"] == pytest.approx(385.0)


def test_only_cancelled_runs_have_no_success_rate() -> None:
    make_runs(DataFlowFactory(), (RunStatus.CANCELLED, 10))
    stats = DataFlowRun.objects.stats()
    assert stats["cancelled"] == 1
    assert stats["success_rate"] is None
    assert stats["p50_duration_ms"] is None


@pytest.mark.parametrize("size", [1, 2, 3, 20, 101])
def test_percentiles_are_exact(size: int) -> None:
    generator = random.Random(size)
    durations = [generator.randint(0, 100_000) for _ in range(size)]
    flow = DataFlowFactory()
    make_runs(flow, *((RunStatus.SUCCESS, duration) for duration in durations))
    stats = flow.runs.stats()
    assert stats["p50_duration_ms"] == pytest.approx(reference_percentile(durations, 0.5))
    assert stats["p95_duration_ms"] == pytest.approx(reference_percentile(durations, 0.95))
    assert stats["min_duration_ms"] == min(durations)
    assert stats["max_duration_ms"] == max(durations)


def test_percentiles_of_many_runs_read_offsets_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Computed from the runs, beyond the limit PostgreSQL reads the rated-duration index at
    # two offsets instead of sorting: the same figures either way.
    durations = [random.Random(3).randint(0, 5000) for _ in range(40)]
    flow = DataFlowFactory()
    make_runs(flow, *((RunStatus.SUCCESS, duration) for duration in durations))
    sorted_stats = DataFlowRun.objects.stats_from_runs()
    monkeypatch.setattr("django_dataflows.models.runs.SORTED_PERCENTILES_LIMIT", 10)
    with CaptureQueriesContext(connection) as queries:
        offset_stats = DataFlowRun.objects.stats_from_runs()
    assert len(queries) == 3  # counts and costs, two offsets
    assert offset_stats == sorted_stats
    assert offset_stats["p95_duration_ms"] == pytest.approx(reference_percentile(durations, 0.95))


def test_soft_deleted_runs_are_left_out() -> None:
    flow = DataFlowFactory()
    _kept, deleted = make_runs(flow, (RunStatus.SUCCESS, 10), (RunStatus.FAILED, 99))
    deleted.soft_delete()
    stats = DataFlowRun.objects.stats()
    assert (stats["total"], stats["failed"], stats["success_rate"]) == (1, 0, 100.0)
    assert stats["max_duration_ms"] == 10
    assert DataFlowRun.objects.stats_per_flow()[flow.pk]["total"] == 1


def test_since_keeps_runs_created_from_then() -> None:
    flow = DataFlowFactory()
    now = timezone.now()
    DataFlowRunFactory(data_flow=flow, created_at=now - timedelta(days=2), duration_ms=1)
    DataFlowRunFactory(data_flow=flow, created_at=now - timedelta(hours=1), duration_ms=2)
    stats = DataFlowRun.objects.stats(since=now - timedelta(days=1))
    assert (stats["total"], stats["min_duration_ms"]) == (1, 2)


def test_stats_query_count_is_bounded() -> None:
    flow = DataFlowFactory()
    make_runs(flow, *((RunStatus.SUCCESS, n) for n in range(50)))
    with CaptureQueriesContext(connection) as queries:
        DataFlowRun.objects.stats()
    # The hours not folded yet, the rollups and the active runs, then the durations of
    # these few rated runs.
    assert len(queries) == 3


def test_stats_average_the_cost_of_rated_runs() -> None:
    flow = DataFlowFactory()
    for status, cpu, queries in (
        (RunStatus.SUCCESS, 10, 4),
        (RunStatus.FAILED, 30, 2),
        (RunStatus.CANCELLED, 1000, 1000),
    ):
        DataFlowRunFactory(
            data_flow=flow, status=status, duration_ms=5, cpu_time_ms=cpu, db_queries=queries
        )

    stats = DataFlowRun.objects.stats_from_runs()

    assert (stats["avg_cpu_time_ms"], stats["avg_db_queries"]) == (20.0, 3.0)


def test_stats_from_rollups_average_the_cost_of_rated_runs_that_have_one() -> None:
    flow = DataFlowFactory()
    for status, cpu, queries in (
        (RunStatus.SUCCESS, 10, 4),
        (RunStatus.FAILED, 30, None),
        (RunStatus.SUCCESS, None, None),  # from before costs were kept
        (RunStatus.CANCELLED, 1000, 1000),  # not rated
    ):
        DataFlowRunFactory(
            data_flow=flow, status=status, duration_ms=5, cpu_time_ms=cpu, db_queries=queries
        )

    stats = DataFlowRun.objects.stats()

    assert (stats["success"], stats["failed"]) == (2, 1)
    assert (stats["avg_cpu_time_ms"], stats["avg_db_queries"]) == (20.0, 4.0)
    assert flow.runs.stats_per_flow()[flow.pk]["avg_cpu_time_ms"] == 20.0
    assert DataFlowRun.objects.stats_from_runs()["avg_db_queries"] == 4.0


def test_stats_per_flow_matches_stats_of_each_flow_in_three_queries() -> None:
    generator = random.Random(7)
    flows = [DataFlowFactory() for _ in range(4)]
    for index, flow in enumerate(flows[:3]):
        make_runs(
            flow,
            *(
                (generator.choice([RunStatus.SUCCESS, RunStatus.FAILED]), generator.randint(0, 999))
                for _ in range(index * 7 + 1)
            ),
            (RunStatus.PENDING, None),
        )
    make_runs(flows[3], (RunStatus.CANCELLED, None))
    with CaptureQueriesContext(connection) as queries:
        per_flow = DataFlowRun.objects.stats_per_flow()
    assert len(queries) <= 3  # the hours not folded yet, the counts, the durations
    assert set(per_flow) == {flow.pk for flow in flows}
    for flow in flows:
        assert per_flow[flow.pk] == pytest.approx(flow.runs.stats())


def test_stats_of_an_empty_selection() -> None:
    assert DataFlowRun.objects.filter(data_flow__in=[]).stats()["total"] == 0
    assert DataFlowRun.objects.filter(data_flow__in=[]).stats_per_flow() == {}


def test_soft_delete_of_active_run_is_refused() -> None:
    run = DataFlowRunFactory(status=RunStatus.PAUSED)
    with pytest.raises(InvalidRunState, match="only finished runs can be deleted"):
        run.soft_delete()
    run.refresh_from_db()
    assert run.deleted_at is None


def test_soft_delete_twice_keeps_the_first_time() -> None:
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    run.soft_delete()
    first = run.deleted_at
    run.soft_delete()
    assert run.deleted_at == first
    assert list(DataFlowRun.objects.deleted()) == [run]
    assert not DataFlowRun.objects.not_deleted().exists()
