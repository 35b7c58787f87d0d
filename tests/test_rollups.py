"""Statistics from rollups equal statistics computed from the runs, on every write path."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dataflows import histograms
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import (
    DataFlowRun,
    RunDurationBucket,
    RunRollup,
    RunRollupLevel,
    RunStatus,
)
from django_dataflows.rollups import fold_rollups, rebuild_rollups
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db

COUNTS = ("total", *RunStatus.values, "success_rate", "min_duration_ms", "max_duration_ms")
PERCENTILE_KEYS = ("p50_duration_ms", "p95_duration_ms")


def assert_same_stats(rolled: dict[str, Any], computed: dict[str, Any], *, exact: bool) -> None:
    """Counts exactly equal; percentiles exact, or within the histogram's 1 %."""
    assert {key: rolled[key] for key in COUNTS} == {key: computed[key] for key in COUNTS}
    for key in ("avg_duration_ms", "avg_cpu_time_ms", "avg_db_queries"):
        assert rolled[key] == pytest.approx(computed[key]), key
    for key in PERCENTILE_KEYS:
        if computed[key] is None or exact:
            assert rolled[key] == pytest.approx(computed[key]), key
        else:
            assert abs(rolled[key] - computed[key]) <= 0.01 * computed[key] + 1e-9, key


def assert_rollups_match_runs(since: datetime | None = None, *, exact: bool = True) -> None:
    """Before the fold (hourly rows) and after it (the levels): the figures of the runs."""
    assert_hourly_and_levels_match_runs(since, exact=exact)
    fold_rollups()
    assert not RunRollup.objects.filter(changed=True).exists()
    assert_hourly_and_levels_match_runs(since, exact=exact)


def assert_hourly_and_levels_match_runs(since: datetime | None, *, exact: bool) -> None:
    runs = DataFlowRun.objects.all()
    assert_same_stats(runs.stats(since=since), runs.stats_from_runs(since=since), exact=exact)
    per_flow = runs.stats_per_flow(since=since)
    from_runs = runs.stats_per_flow_from_runs(since=since)
    assert set(per_flow) == set(from_runs)
    for flow_id, stats in per_flow.items():
        assert_same_stats(stats, from_runs[flow_id], exact=exact)


def rollup_rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rollups = RunRollup.objects.exclude(success=0, failed=0, cancelled=0, timed_out=0).values_list(
        "data_flow_id",
        "hour",
        "success",
        "failed",
        "cancelled",
        "timed_out",
        "rated",
        "duration_sum",
        "duration_min",
        "duration_max",
        "cpu_time_count",
        "cpu_time_sum",
        "db_queries_count",
        "db_queries_sum",
    )
    buckets = RunDurationBucket.objects.exclude(count=0).values_list(
        "data_flow_id", "hour", "bucket", "count"
    )
    return sorted(rollups), sorted(buckets)


def mixed_runs(flow: Any, count: int, seed: int, *, hours: int = 5) -> None:
    generator = random.Random(seed)
    now = timezone.now()
    statuses = [RunStatus.SUCCESS] * 6 + [
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.TIMED_OUT,
    ]
    runs = []
    for _ in range(count):
        created = now - timedelta(minutes=generator.randint(0, hours * 60))
        duration = timedelta(milliseconds=int(generator.lognormvariate(7, 1.5)))
        costed = generator.random() < 0.8  # runs from before costs were kept have none
        runs.append(
            DataFlowRun(
                data_flow=flow,
                status=generator.choice(statuses),
                cpu_time_ms=generator.randint(0, 5000) if costed else None,
                db_queries=generator.randint(0, 40) if costed else None,
                created_at=created,
                # duration_ms is the database's ended_at - started_at.
                started_at=created,
                ended_at=created + duration,
            )
        )
    DataFlowRun.objects.bulk_create(runs)


def test_runs_finished_by_the_executor_are_rolled_up() -> None:
    succeeds = DataFlowFactory()
    explodes = DataFlowFactory(flow="tests.testapp.flows.Explode")
    for _ in range(3):
        FlowExecutor.execute(succeeds)
        with pytest.raises(ValueError, match="boom"):
            FlowExecutor.execute(explodes)
    stats = succeeds.runs.stats()
    assert (stats["total"], stats["success"], stats["success_rate"]) == (3, 3, 100.0)
    assert explodes.runs.stats()["failed"] == 3
    assert_rollups_match_runs()


def test_cancel_and_retry_move_the_counts(django_capture_on_commit_callbacks: Any) -> None:
    flow = DataFlowFactory()
    run = flow.create_pending_run()
    assert flow.runs.stats()["pending"] == 1
    FlowExecutor.cancel(run)
    assert (flow.runs.stats()["pending"], flow.runs.stats()["cancelled"]) == (0, 1)
    with django_capture_on_commit_callbacks(execute=True):
        FlowExecutor.retry(run)
    stats = flow.runs.stats()
    assert (stats["cancelled"], stats["success"], stats["total"]) == (1, 1, 2)
    assert_rollups_match_runs()


def test_a_soft_delete_takes_the_run_out_and_the_hour_keeps_its_true_extremes() -> None:
    flow = DataFlowFactory()
    short, _middle, long = (
        DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, duration_ms=duration)
        for duration in (10, 50, 900)
    )
    short.soft_delete()
    long.soft_delete()
    stats = flow.runs.stats()
    assert (stats["total"], stats["min_duration_ms"], stats["max_duration_ms"]) == (1, 50, 50)
    assert_rollups_match_runs()


def test_a_changed_duration_or_status_of_a_finished_run_moves_its_contribution() -> None:
    flow = DataFlowFactory()
    run = DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, duration_ms=100)
    DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, duration_ms=300)
    run.ended_at = run.started_at + timedelta(milliseconds=700)  # duration_ms follows
    run.status = RunStatus.FAILED
    run.save()
    stats = flow.runs.stats()
    assert (stats["failed"], stats["min_duration_ms"], stats["max_duration_ms"]) == (1, 300, 700)
    assert_rollups_match_runs()


def test_pruned_runs_stay_in_the_statistics() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 40, seed=1)
    old = timezone.now() - timedelta(days=30)
    DataFlowRun.objects.filter(pk__in=list(flow.runs.values_list("pk", flat=True)[:25])).update(
        created_at=old
    )
    before = flow.runs.stats()
    call_command("dataflows_prune", "--older-than", "7", stdout=StringIO(), stderr=StringIO())
    assert flow.runs.count() == 15
    after = flow.runs.stats()
    # The counts are the same; the percentiles now come from the histogram (the durations
    # of the pruned runs are gone), within 1 %.
    assert_same_stats(after, before, exact=False)
    assert flow.runs.stats_from_runs()["total"] == 15


def test_histogram_percentiles_are_within_one_percent_from_a_thousand_rated_runs() -> None:
    flows = [DataFlowFactory(), DataFlowFactory()]
    for seed, flow in enumerate(flows):
        mixed_runs(flow, 1300, seed=seed, hours=30)
    stats = flows[0].runs.stats()
    assert stats["success"] + stats["failed"] + stats["timed_out"] >= 1000
    assert_rollups_match_runs(exact=False)
    assert_rollups_match_runs(timezone.now() - timedelta(hours=7, minutes=13), exact=False)


def test_below_a_thousand_rated_runs_percentiles_are_exact() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 300, seed=5)
    assert_rollups_match_runs(exact=True)


def test_since_adds_whole_hours_and_the_partial_hour_from_the_runs() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 200, seed=9, hours=10)
    now = timezone.now()
    for since in (
        now - timedelta(hours=4, minutes=17, seconds=3),
        (now - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0),
        now + timedelta(days=1),  # the future: nothing yet
        now - timedelta(days=400),  # before the first rollup: everything
    ):
        assert_rollups_match_runs(since)
    assert flow.runs.stats(since=now + timedelta(days=1))["total"] == 0
    assert flow.runs.stats(since=now - timedelta(days=400))["total"] == 200


def test_statistics_read_a_bounded_number_of_queries() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 1100, seed=2)
    flow.create_pending_run()
    with CaptureQueriesContext(connection) as queries:
        flow.runs.stats(since=timezone.now() - timedelta(hours=2, minutes=30))
    # The hours not folded yet, the counts (rollups + edge + active runs in one statement),
    # then the histogram.
    assert len(queries) == 3


def test_other_selections_are_computed_from_their_runs() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 30, seed=4)
    failed = DataFlowRun.objects.filter(status=RunStatus.FAILED)
    assert failed.stats() == failed.stats_from_runs()
    assert failed.stats()["success"] == 0


def test_rebuild_recomputes_the_same_rollups_and_can_run_again() -> None:
    flows = [DataFlowFactory(name=f"rebuilt-{n}") for n in range(3)]
    for seed, flow in enumerate(flows):
        mixed_runs(flow, 60, seed=seed)
    DataFlowRunFactory(data_flow=flows[0], status=RunStatus.SUCCESS).soft_delete()
    kept = rollup_rows()
    # A rebuild stopped after the first flow: that flow is rebuilt, the others untouched.
    RunRollup.objects.all().update(success=0)
    rebuild_rollups([flows[0].pk])
    assert rollup_rows() != kept
    out, err = StringIO(), StringIO()
    call_command("dataflows_rollups", "--rebuild", stdout=out, stderr=err)
    assert rollup_rows() == kept
    assert "Rebuilt 3/3 flow(s)" in err.getvalue()
    assert "Rebuilt the rollups of 3 flow(s)." in out.getvalue()
    call_command("dataflows_rollups", "--rebuild", stdout=StringIO(), stderr=StringIO())
    assert rollup_rows() == kept


def test_rebuild_since_leaves_older_hours_alone() -> None:
    flow = DataFlowFactory(name="partly")
    mixed_runs(flow, 50, seed=3, hours=6)
    kept = rollup_rows()
    cutoff = timezone.now() - timedelta(hours=3)
    RunRollup.objects.all().update(cancelled=99)
    call_command(
        "dataflows_rollups",
        "--rebuild",
        "--flow",
        "partly",
        "--since",
        cutoff.isoformat(),
        stdout=StringIO(),
        stderr=StringIO(),
    )
    hour = cutoff.replace(minute=0, second=0, microsecond=0)
    assert set(RunRollup.objects.filter(hour__lt=hour).values_list("cancelled", flat=True)) <= {99}
    assert [row for row in rollup_rows()[0] if row[1] >= hour] == [
        row for row in kept[0] if row[1] >= hour
    ]


def test_rebuild_of_an_unknown_flow_is_an_error() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No data flow named 'nope'"):
        call_command("dataflows_rollups", "--rebuild", "--flow", "nope")


def test_histogram_buckets_are_within_the_relative_accuracy() -> None:
    for value in (1, 2, 3, 17, 999, 1000, 123_456, 86_400_000):
        bucket = value_bucket(value)
        assert abs(histograms.bucket_value(bucket) - value) <= 0.01 * value
    assert histograms.bucket_value(histograms.ZERO_BUCKET) == 0.0
    assert histograms.histogram_percentile([], 0.5) is None


def test_percentiles_of_a_histogram_in_parts_equal_those_of_the_merged_histogram() -> None:
    """Statistics read a histogram as the sorted rows of several parts (days, hours, the
    runs of a partial hour): a bucket may come once per part, and a part may have none."""
    rng = random.Random(7)
    parts = [
        [(rng.randint(-1, 400), rng.randint(0, 5)) for _ in range(rng.randint(0, 60))]
        for _ in range(3)
    ]
    merged: dict[int, int] = {}
    for part in parts:
        for bucket, count in part:
            merged[bucket] = merged.get(bucket, 0) + count
    fractions = (0.0, 0.5, 0.95, 1.0)
    rows = sorted(pair for part in parts for pair in part)
    got = histograms.histogram_percentiles(rows, fractions, minimum=3, maximum=50_000)
    # Independently: every run stands for its bucket's value (within the exact extremes).
    values = sorted(
        min(max(histograms.bucket_value(bucket), 3.0), 50_000.0)
        for bucket, count in merged.items()
        for _ in range(max(count, 0))
    )
    expected = [histograms.exact_percentile(values, fraction) for fraction in fractions]
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected[1] is not None
    assert histograms.histogram_percentiles([(5, 0)], fractions) == [None] * 4


def value_bucket(value: int) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {histograms.bucket_sql('%s')}", [value, value])
        (bucket,) = cursor.fetchone()
    return int(bucket)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_the_rollups_exact() -> None:
    flows = [DataFlowFactory() for _ in range(2)]
    threads_count, per_thread = 4, 40
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        generator = random.Random(seed)
        try:
            barrier.wait()
            for index in range(per_thread):
                started = timezone.now()
                run = DataFlowRun.objects.create(
                    data_flow=generator.choice(flows),
                    status=generator.choice([RunStatus.SUCCESS, RunStatus.FAILED]),
                    started_at=started,
                    ended_at=started + timedelta(milliseconds=generator.randint(1, 10_000)),
                )
                if index % 5 == 0:
                    run.soft_delete()
                elif index % 7 == 0:
                    DataFlowRun.objects.filter(pk=run.pk).update(
                        status=RunStatus.TIMED_OUT,
                        ended_at=started + timedelta(milliseconds=generator.randint(1, 10_000)),
                    )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    writing = threading.Event()
    writing.set()
    folds = []

    def fold() -> None:
        # The heartbeat folds while workers write: a mark set meanwhile must survive.
        try:
            while writing.is_set():
                folds.append(fold_rollups())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(threads_count)]
    folder = threading.Thread(target=fold)
    folder.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writing.clear()
    folder.join()
    assert not errors
    assert folds
    assert DataFlowRun.objects.count() == threads_count * per_thread
    # Folded while they wrote, not yet since: the levels and the hours agree with the runs.
    assert_hourly_and_levels_match_runs(None, exact=True)
    assert_rollups_match_runs()
    kept = rollup_rows()
    rebuild_rollups()
    assert rollup_rows() == kept


def test_counts_per_hour_from_rollups_equal_those_from_the_runs() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 120, seed=11, hours=20)
    flow.create_pending_run()
    DataFlowRun.objects.filter(status=RunStatus.FAILED).first().soft_delete()  # type: ignore[union-attr]
    end = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=24)
    from_rollups = DataFlowRun.objects.counts_per_hour(start, end)
    # A filter the rollups cannot answer for reads the runs: the same counts.
    from_runs = DataFlowRun.objects.exclude(trigger="nothing").counts_per_hour(start, end)
    assert from_rollups == from_runs
    assert sum(sum(hour.values()) for hour in from_rollups.values()) == 120


def test_triggers_a_sqlite_table_rebuild_dropped_are_restored_after_migrate() -> None:
    from django_dataflows.rollup_sql import trigger_statements
    from django_dataflows.rollups import restore_dropped_triggers

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL keeps triggers through ALTER TABLE")
    _create, drop = trigger_statements("sqlite")
    with connection.cursor() as cursor:
        for sql in drop:
            cursor.execute(sql)
    restore_dropped_triggers()
    flow = DataFlowFactory()
    DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, duration_ms=5)
    assert flow.runs.stats()["success"] == 1


def test_many_flows_at_once_read_a_bounded_number_of_durations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("django_dataflows.models.stats.EXACT_DURATIONS_READ", 60)
    small, large = DataFlowFactory(), DataFlowFactory()
    mixed_runs(small, 40, seed=21)
    mixed_runs(large, 300, seed=22)
    per_flow = DataFlowRun.objects.stats_per_flow()
    from_runs = DataFlowRun.objects.stats_per_flow_from_runs()
    # The small flow fits the budget: exact; the large one comes from its histogram.
    assert_same_stats(per_flow[small.pk], from_runs[small.pk], exact=True)
    assert_same_stats(per_flow[large.pk], from_runs[large.pk], exact=False)


def test_folded_days_and_all_flows_answer_like_the_runs_over_many_days() -> None:
    flows = [DataFlowFactory(), DataFlowFactory(), DataFlowFactory()]
    for seed, flow in enumerate(flows):
        mixed_runs(flow, 400, seed=30 + seed, hours=24 * 6)
    fold_rollups()
    assert RunRollupLevel.objects.filter(span=24, flow_id=0).count() >= 6
    now = timezone.now()
    for since in (
        None,
        now - timedelta(days=4, hours=5, minutes=7),  # whole days, hours and a partial hour
        (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0),
        now - timedelta(hours=30),
    ):
        assert_rollups_match_runs(since, exact=False)
    # A change to a folded day (a soft delete, a late finish) is exact before the next fold.
    DataFlowRun.objects.filter(created_at__lt=now - timedelta(days=3)).first().soft_delete()  # type: ignore[union-attr]
    late = DataFlowRun.objects.filter(created_at__lt=now - timedelta(days=2)).last()
    assert late is not None
    late.status, late.ended_at = RunStatus.FAILED, late.started_at + timedelta(seconds=99)
    late.save()
    assert RunRollup.objects.filter(changed=True).count() == 2
    for since in (None, now - timedelta(days=3, hours=1)):
        assert_hourly_and_levels_match_runs(since, exact=False)
    assert_rollups_match_runs(now - timedelta(days=5, minutes=3), exact=False)
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(days=7)
    assert DataFlowRun.objects.counts_per_hour(start, end) == DataFlowRun.objects.exclude(
        trigger="nothing"
    ).counts_per_hour(start, end)


def test_a_deleted_flow_leaves_the_levels_of_all_flows() -> None:
    kept, deleted = DataFlowFactory(), DataFlowFactory()
    mixed_runs(kept, 200, seed=41, hours=24 * 3)
    mixed_runs(deleted, 200, seed=42, hours=24 * 3)
    fold_rollups()
    # Changed since the fold: deleting folds first, then takes the flow out.
    DataFlowRunFactory(data_flow=deleted, status=RunStatus.SUCCESS, duration_ms=7)
    deleted.delete()
    assert not RunRollupLevel.objects.filter(flow_id=deleted.pk).exists()
    assert not RunRollup.objects.filter(changed=True).exists()
    assert_rollups_match_runs(exact=False)
    assert DataFlowRun.objects.stats()["total"] == kept.runs.count()


def test_the_heartbeat_folds_the_changed_rollups() -> None:
    from django_dataflows.scheduling import run_heartbeat

    flow = DataFlowFactory(enabled=False)
    mixed_runs(flow, 50, seed=43, hours=24 * 2)
    assert RunRollup.objects.filter(changed=True).exists()
    run_heartbeat()
    assert not RunRollup.objects.filter(changed=True).exists()
    assert RunRollupLevel.objects.filter(span=24, flow_id=flow.pk).exists()
    assert_rollups_match_runs()


def test_the_fold_works_while_queries_are_logged() -> None:
    """With ``DEBUG=True`` (the example project's setting) Django logs each query with its
    parameters; on SQLite it quotes every parameter, and a list cannot be quoted."""
    flow = DataFlowFactory(enabled=False)
    mixed_runs(flow, 20, seed=45, hours=3)
    with CaptureQueriesContext(connection):  # the logging cursor, as under DEBUG=True
        assert fold_rollups() >= 1
    assert not RunRollup.objects.filter(changed=True).exists()
    assert_rollups_match_runs()


def test_a_rebuild_recomputes_the_levels_too() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 120, seed=44, hours=24 * 3)
    fold_rollups()
    levels = sorted(RunRollupLevel.objects.values_list("span", "flow_id", "start", "success"))
    RunRollupLevel.objects.update(success=0)
    rebuild_rollups()
    assert sorted(RunRollupLevel.objects.values_list("span", "flow_id", "start", "success")) == (
        levels
    )
    assert_rollups_match_runs()


def test_the_fold_command_folds_every_changed_day() -> None:
    flow = DataFlowFactory()
    mixed_runs(flow, 60, seed=45, hours=24 * 4)
    days = len(
        {rollup_levels_day(hour) for hour in RunRollup.objects.values_list("hour", flat=True)}
    )
    out = StringIO()
    call_command("dataflows_rollups", "--fold", stdout=out, stderr=StringIO())
    assert f"Folded the changed rollups of {days} day(s)." in out.getvalue()
    assert not RunRollup.objects.filter(changed=True).exists()
    assert_rollups_match_runs()


def rollup_levels_day(hour: datetime) -> datetime:
    from django_dataflows.rollup_levels import day_of

    return day_of(hour)
