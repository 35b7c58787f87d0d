"""The heartbeat's claim, catch-up, overlap skip, batch limit and reaper."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.exceptions import RunNotPending
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, Heartbeat, RunStatus, RunTrigger
from django_dataflows.scheduling import claim_due_flows, run_heartbeat
from tests.factories import DataFlowFactory, DataFlowRunFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db

SLOT = datetime.datetime(2026, 3, 1, 8, 0, tzinfo=datetime.UTC)


def due_flow(slot=SLOT, **fields):
    data_flow = DataFlowFactory(**fields)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)
    data_flow.refresh_from_db()
    return data_flow


def test_heartbeat_runs_a_due_flow_once_for_its_slot():
    data_flow = due_flow(run_interval=300)
    now = SLOT + datetime.timedelta(seconds=20)

    claim = claim_due_flows(now)

    run = DataFlowRun.objects.get()
    assert claim.runs == [run]
    assert (run.trigger, run.scheduled_for, run.status) == (
        RunTrigger.SCHEDULE,
        SLOT,
        RunStatus.PENDING,
    )
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.IN_PROGRESS
    assert data_flow.last_run_at == now
    assert claim_due_flows(now).runs == []


def test_the_schedule_advances_from_the_slot_not_from_now():
    data_flow = due_flow(run_interval=300)

    claim_due_flows(SLOT + datetime.timedelta(seconds=47))

    data_flow.refresh_from_db()
    assert data_flow.next_run_at == SLOT + datetime.timedelta(seconds=300)


def test_a_flow_down_for_a_day_runs_once_then_resumes_on_its_grid():
    data_flow = due_flow(run_interval=60)
    now = SLOT + datetime.timedelta(days=1, seconds=30)

    claim = claim_due_flows(now)

    assert len(claim.runs) == 1
    data_flow.refresh_from_db()
    assert data_flow.next_run_at == SLOT + datetime.timedelta(days=1, seconds=60)
    assert claim_due_flows(now).runs == []


def test_a_flow_with_an_active_run_is_skipped_and_stays_due():
    data_flow = due_flow()
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.IN_PROGRESS)

    claim = claim_due_flows(SLOT + datetime.timedelta(seconds=1))

    assert (claim.flows_due, claim.flows_skipped, claim.runs) == (1, 1, [])
    data_flow.refresh_from_db()
    assert data_flow.next_run_at == SLOT


def test_the_batch_limit_takes_the_most_overdue_first(settings):
    settings.DATAFLOWS = {"HEARTBEAT_BATCH_SIZE": 2}
    flows = [due_flow(SLOT - datetime.timedelta(minutes=i)) for i in range(4)]

    claim = claim_due_flows(SLOT)

    assert {run.data_flow for run in claim.runs} == {flows[3], flows[2]}
    assert claim.flows_due == 2
    assert len(claim_due_flows(SLOT).runs) == 2
    assert claim_due_flows(SLOT).runs == []


def test_claim_statements_do_not_grow_with_the_number_of_due_flows(dummy_backend):
    def statements(count):
        DataFlow.objects.all().delete()
        for _ in range(count):
            due_flow()
        with CaptureQueriesContext(connection) as queries:
            result = run_heartbeat(source="test")
        assert result.flows_triggered == count
        return len(queries)

    run_heartbeat(source="test")  # the first heartbeat ever also creates the Heartbeat row
    few, many = statements(2), statements(40)

    assert few == many
    assert many <= 11  # the claim's 10, plus one query for overdue flows (dead man's switch)


def test_heartbeat_counts_and_runs_every_due_flow():
    working = due_flow(name="working")
    due_flow(name="broken", flow="tests.testapp.flows.Explode")
    busy = due_flow(name="busy")
    DataFlowRunFactory(data_flow=busy, status=RunStatus.IN_PROGRESS)
    DataFlowFactory(name="not due yet")
    DataFlow.objects.filter(name="not due yet").update(
        next_run_at=timezone.now() + datetime.timedelta(hours=1)
    )

    result = run_heartbeat(source="test")

    assert result.as_dict() | {"timestamp": None} == {
        "flows_due": 3,
        "flows_triggered": 2,
        "flows_skipped": 1,
        "flows_failed": 1,
        "runs_timed_out": 0,
        "flows_overdue": 0,
        "enqueue_failures": 0,
        "timestamp": None,
    }
    assert working.runs.get().status == RunStatus.SUCCESS
    assert Record.objects.count() == 1


def test_heartbeat_is_recorded_for_health_checks():
    assert Heartbeat.last() is None
    due_flow()

    run_heartbeat(source="command", client="manage.py")
    run_heartbeat(source="http", client="10.1.2.3")

    last = Heartbeat.last()
    assert last is not None
    assert (last.source, last.client) == ("http", "10.1.2.3")
    assert last.result["flows_triggered"] == 0
    assert Heartbeat.objects.count() == 1
    assert str(last).startswith("Heartbeat at ")


def test_heartbeat_finished_signal_carries_the_result():
    received = []
    due_flow()

    def receiver(sender, result, **kwargs):
        received.append(result.flows_triggered)

    signals.heartbeat_finished.connect(receiver)
    try:
        run_heartbeat()
    finally:
        signals.heartbeat_finished.disconnect(receiver)

    assert received == [1]


# -- the reaper -----------------------------------------------------------------------


def test_a_run_in_progress_past_its_timeout_is_timed_out(settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 600}
    data_flow = DataFlowFactory()
    now = timezone.now()
    stuck = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.IN_PROGRESS,
        started_at=now - datetime.timedelta(seconds=601),
    )

    assert FlowExecutor.time_out_stuck_runs(now) == 1

    stuck.refresh_from_db()
    data_flow.refresh_from_db()
    assert stuck.status == RunStatus.TIMED_OUT
    assert stuck.ended_at == now
    assert "still in progress after the 600-second timeout" in stuck.error_message
    assert data_flow.last_run_status == RunStatus.TIMED_OUT


def test_the_flow_timeout_overrides_the_setting(settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 3600}
    now = timezone.now()
    quick = DataFlowRunFactory(
        data_flow=DataFlowFactory(timeout=30),
        status=RunStatus.IN_PROGRESS,
        started_at=now - datetime.timedelta(seconds=31),
    )
    slow = DataFlowRunFactory(
        data_flow=DataFlowFactory(),
        status=RunStatus.IN_PROGRESS,
        started_at=now - datetime.timedelta(seconds=31),
    )

    assert FlowExecutor.time_out_stuck_runs(now) == 1

    quick.refresh_from_db()
    slow.refresh_from_db()
    assert (quick.status, slow.status) == (RunStatus.TIMED_OUT, RunStatus.IN_PROGRESS)


def test_a_pending_run_no_worker_took_is_timed_out_and_the_flow_freed(settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 60}
    data_flow = due_flow()
    lost = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.PENDING,
        created_at=timezone.now() - datetime.timedelta(minutes=5),
    )

    result = run_heartbeat()

    lost.refresh_from_db()
    assert lost.status == RunStatus.TIMED_OUT
    assert "no worker picked the run up within 60 seconds" in lost.error_message
    assert result.runs_timed_out == 1
    assert result.flows_triggered == 1
    assert data_flow.runs.filter(status=RunStatus.SUCCESS).count() == 1


def test_a_late_worker_cannot_run_a_timed_out_run(settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 60}
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()
    long_ago = timezone.now() - datetime.timedelta(minutes=2)
    DataFlowRun.objects.filter(pk=run.pk).update(created_at=long_ago, activated_at=long_ago)
    FlowExecutor.time_out_stuck_runs()

    with pytest.raises(RunNotPending):
        FlowExecutor.execute(data_flow, run=run)

    assert not Record.objects.exists()


def test_a_late_finish_cannot_overwrite_a_timed_out_run(settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 60}
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()

    def reap_meanwhile(run, **kwargs):
        later = timezone.now() + datetime.timedelta(minutes=5)
        assert FlowExecutor.time_out_stuck_runs(later) == 1

    signals.run_started.connect(reap_meanwhile)
    try:
        FlowExecutor.execute(data_flow, run=run)
    finally:
        signals.run_started.disconnect(reap_meanwhile)

    run.refresh_from_db()
    assert run.status == RunStatus.TIMED_OUT
    assert run.result is None


def test_runs_within_their_timeout_are_left_alone():
    DataFlowRunFactory(status=RunStatus.IN_PROGRESS, started_at=timezone.now())
    DataFlowRunFactory(status=RunStatus.PENDING)

    assert FlowExecutor.time_out_stuck_runs() == 0


def test_a_failing_heartbeat_receiver_is_logged_not_raised(caplog):
    due_flow()

    def broken(sender, **kwargs):
        raise RuntimeError("dashboard is down")

    signals.heartbeat_finished.connect(broken)
    try:
        result = run_heartbeat()
    finally:
        signals.heartbeat_finished.disconnect(broken)

    assert result.flows_triggered == 1
    assert "dashboard is down" in caplog.text
