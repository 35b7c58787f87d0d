"""One clock: every timestamp of a run and its steps is the database's.

The app process's clock is moved ten minutes either way (time-machine fakes Python's
clock, not the machine's, which the database keeps). Whatever the path, a run's and its
steps' timestamps stay within a moment of the database's clock, and ``duration_ms`` is
always ``ended_at - started_at`` as stored, also for a row written by other code. The
reaper and the pickup deadline, called without a time, judge runs by that clock too.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.db.models.functions import Now
from django.test import override_settings

from django_dataflows.clock import database_now
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlowRun, RunStatus
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db(transaction=True)

#: How far the timestamps of one short run may lie from the database's clock read around it.
SLACK = timedelta(seconds=30)


def the_database_clock() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement_timestamp()"
            if connection.vendor == "postgresql"
            else "SELECT STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')"
        )
        value = cursor.fetchone()[0]
    if isinstance(value, str):
        value = datetime.fromisoformat(value + "+00:00")
    return value


def assert_on_the_database_clock(run: DataFlowRun, before: datetime, after: datetime) -> None:
    for name in ("created_at", "activated_at", "started_at", "ended_at", "updated_at"):
        value = getattr(run, name)
        assert before - SLACK <= value <= after + SLACK, (name, value, before, after)
    assert run.duration_ms == round((run.ended_at - run.started_at).total_seconds() * 1000)
    for step in run.steps.all():
        assert before - SLACK <= step.started_at <= after + SLACK
        assert before - SLACK <= step.ended_at <= after + SLACK
        assert step.duration_ms == round((step.ended_at - step.started_at).total_seconds() * 1000)


@pytest.fixture(params=[-10, 10], ids=["app-clock-10-min-slow", "app-clock-10-min-fast"])
def shifted(request: pytest.FixtureRequest) -> Iterator[None]:
    """Python's clock (not the machine's, which the database reads) moved, and ticking."""
    with time_machine.travel(timedelta(minutes=request.param), tick=True):
        yield


def test_a_run_started_by_hand_is_stamped_by_the_database(shifted: None) -> None:
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    before = the_database_clock()

    FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.SUCCESS
    assert_on_the_database_clock(run, before, the_database_clock())


def test_a_queued_run_is_stamped_by_the_database(shifted: None) -> None:
    run = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps").create_pending_run()
    before = the_database_clock()

    FlowExecutor.execute_queued(run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert_on_the_database_clock(run, before, the_database_clock())


def test_a_heartbeat_judges_and_stamps_by_the_database(shifted: None) -> None:
    DataFlowFactory(flow="tests.testapp.flows.NoOp")
    before = the_database_clock()

    result = run_heartbeat()

    assert result.flows_triggered == 1
    run = DataFlowRun.objects.get()
    assert_on_the_database_clock(run, before, the_database_clock())
    assert before - SLACK <= database_now() <= the_database_clock() + SLACK


def test_a_failed_and_a_cancelled_run_are_stamped_by_the_database(shifted: None) -> None:
    failing = DataFlowFactory(flow="tests.testapp.flows.Explode")
    before = the_database_clock()
    with pytest.raises(Exception, match="boom"):
        FlowExecutor.execute(failing)
    pending = DataFlowFactory().create_pending_run()
    FlowExecutor.cancel(pending)
    after = the_database_clock()

    failed = DataFlowRun.objects.get(data_flow=failing)
    assert failed.status == RunStatus.FAILED
    assert_on_the_database_clock(failed, before, after)
    pending.refresh_from_db()
    assert before - SLACK <= pending.ended_at <= after + SLACK


def test_a_run_written_by_other_code_gets_its_duration_from_its_own_timestamps() -> None:
    started = the_database_clock() - timedelta(minutes=3)
    run = DataFlowRunFactory(started_at=started, ended_at=started + timedelta(seconds=90.25))

    run.refresh_from_db()
    assert run.duration_ms == 90_250
    DataFlowRun.objects.filter(pk=run.pk).update(ended_at=Now())
    run.refresh_from_db()
    assert run.duration_ms == round((run.ended_at - started).total_seconds() * 1000)
    assert DataFlowRun.objects.order_by("-duration_ms").first() == run


def test_the_reaper_judges_stuck_runs_by_the_database_clock(shifted: None) -> None:
    # Five minutes to finish; one run has been in progress for six by the database's clock,
    # the other has just started. The app's clock, ten minutes off, decides neither.
    now = the_database_clock()
    stuck = DataFlowRunFactory(
        data_flow=DataFlowFactory(timeout=300),
        status=RunStatus.IN_PROGRESS,
        started_at=now - timedelta(minutes=6),
    )
    fresh = DataFlowRunFactory(
        data_flow=DataFlowFactory(timeout=300), status=RunStatus.IN_PROGRESS, started_at=now
    )

    assert FlowExecutor.time_out_stuck_runs() == 1

    stuck.refresh_from_db()
    fresh.refresh_from_db()
    assert (stuck.status, fresh.status) == (RunStatus.TIMED_OUT, RunStatus.IN_PROGRESS)


@override_settings(DATAFLOWS={"PICKUP_TIMEOUT": 300})
def test_unclaimed_runs_are_judged_by_the_database_clock(shifted: None) -> None:
    now = the_database_clock()
    lost = DataFlowRunFactory(status=RunStatus.PENDING, activated_at=now - timedelta(minutes=6))
    DataFlowRunFactory(status=RunStatus.PENDING, activated_at=now)

    taken_back = FlowExecutor.take_back_unclaimed_runs()

    assert [run.pk for run in taken_back.runs] == [lost.pk]


@override_settings(DATAFLOWS={"PICKUP_TIMEOUT": 300})
def test_the_admin_health_box_counts_stuck_runs_by_the_database_clock(shifted: None) -> None:
    from django_dataflows.admin.health import collect_health

    now = the_database_clock()
    DataFlowRunFactory(
        data_flow=DataFlowFactory(timeout=300),
        status=RunStatus.IN_PROGRESS,
        started_at=now - timedelta(minutes=6),
    )
    DataFlowRunFactory(
        data_flow=DataFlowFactory(timeout=300), status=RunStatus.IN_PROGRESS, started_at=now
    )
    DataFlowRunFactory(status=RunStatus.PENDING, activated_at=now - timedelta(minutes=6))
    DataFlowRunFactory(status=RunStatus.PENDING, activated_at=now)

    assert collect_health().stuck_runs == 2
    assert DataFlowRun.objects.stuck().count() == 1
    assert DataFlowRun.objects.unclaimed().count() == 1
