"""The heartbeat's claim, catch-up, overlap skip, batch limit and reaper."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection, transaction
from django.db.models.functions import Now
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.exceptions import RunNotPending
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, Heartbeat, RunStatus, RunTrigger
from django_dataflows.runs.execution import RunExecutor
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
    assert data_flow.last_run_status == RunStatus.PENDING
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
        DataFlowRun.objects.all().delete()
        DataFlow.objects.all().delete()
        for _ in range(count):
            due_flow()
        with CaptureQueriesContext(connection) as queries:
            result = run_heartbeat(source="test")
        assert result.flows_triggered == count
        return len(queries)

    run_heartbeat(source="test")  # the first heartbeat ever also creates the Heartbeat row
    # 30 runs' columns fit in one of SQLite's statements (999 parameters); PostgreSQL's
    # claim takes any number in one.
    few, many = statements(2), statements(30)

    assert few == many
    # The claim (due flows, ready downstream flows), the database's now(), the look for
    # runs to redeliver, one for running backfills, one for overdue flows (dead man's
    # switch), one for late runs (max_duration) and one for rollups to fold.
    assert many <= 17


def test_handing_claimed_runs_over_reads_no_column_the_claim_left_out(
    django_assert_num_queries,
):
    # The claim reads only CLAIM_FIELDS of each flow; a backend that read another one would
    # pay a query per run of the batch. Celery builds a real message (kombu's in-memory
    # transport); the Django Tasks backend reads the queue.
    from celery import Celery

    from django_dataflows.backends.celery import CeleryBackend
    from django_dataflows.events import run_event_payload

    due_flow(name="nightly", queue="reports", timeout=120, max_retries=2)
    due_flow(name="hourly", cron="0 * * * *", run_interval=None, timezone="Europe/Berlin")
    with transaction.atomic():
        runs = claim_due_flows(SLOT).runs
    app = Celery("claim-test", broker="memory://")

    with django_assert_num_queries(0):
        for run in runs:
            CeleryBackend._publish(app, run, 60)
            payload = run_event_payload(run)  # what run_enqueued receivers get
            data_flow = run.data_flow
            seen = (
                payload["flow_name"],
                run.queue or data_flow.effective_queue,
                data_flow.effective_timeout,
                data_flow.effective_max_retries,
            )
            assert seen[0] in {"nightly", "hourly"}

    assert sorted((run.data_flow.name, run.queue) for run in runs) == [
        ("hourly", "default"),
        ("nightly", "reports"),
    ]


def test_heartbeat_counts_and_runs_every_due_flow():
    working = due_flow(name="working")
    due_flow(name="broken", flow="tests.testapp.flows.Explode")
    busy = due_flow(name="busy")
    DataFlowRunFactory(data_flow=busy, status=RunStatus.IN_PROGRESS)
    DataFlowFactory(name="not due yet")
    DataFlow.objects.filter(name="not due yet").update(
        next_run_at=Now() + datetime.timedelta(hours=1)
    )

    result = run_heartbeat(source="test")

    assert result.as_dict() | {"timestamp": None} == {
        "flows_due": 3,
        "flows_triggered": 2,
        "flows_skipped": 1,
        "flows_failed": 1,
        "runs_timed_out": 0,
        "flows_overdue": 0,
        "runs_redelivered": 0,
        "runs_never_picked_up": 0,
        "enqueue_failures": 0,
        "timestamp": None,
    }
    assert working.runs.get().status == RunStatus.SUCCESS
    assert Record.objects.count() == 1


def test_heartbeat_is_recorded_for_health_checks():
    assert Heartbeat.last() is None
    due_flow()
    now = SLOT + datetime.timedelta(seconds=20)  # the second heartbeat is in the same slot

    run_heartbeat(source="command", client="manage.py", now=now)
    run_heartbeat(source="http", client="10.1.2.3", now=now + datetime.timedelta(seconds=1))

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
    # Ended on the database's clock, as it wrote the row.
    assert stuck.ended_at >= now - datetime.timedelta(milliseconds=1)
    assert stuck.duration_ms == round((stuck.ended_at - stuck.started_at).total_seconds() * 1000)
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


def test_a_pending_run_no_worker_took_is_handed_to_the_backend_again(settings, dummy_backend):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "PICKUP_TIMEOUT": 60}
    data_flow = due_flow()
    lost = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.PENDING,
        created_at=timezone.now() - datetime.timedelta(minutes=5),
    )

    result = run_heartbeat()

    assert (result.runs_redelivered, result.flows_skipped, result.runs_timed_out) == (1, 1, 0)
    assert [run.pk for run in dummy_backend.enqueued] == [lost.pk]
    redelivered = DataFlowRun.objects.get()
    assert (redelivered.status, redelivered.redeliveries) == (RunStatus.PENDING, 1)
    assert redelivered.task_id == lost.task_id


def test_a_pending_run_left_by_a_dead_process_is_run_by_the_next_heartbeat(settings):
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 60}
    data_flow = DataFlowFactory()
    lost = data_flow.create_pending_run()  # its heartbeat died before running it
    DataFlowRun.objects.filter(pk=lost.pk).update(
        activated_at=timezone.now() - datetime.timedelta(minutes=2)
    )

    assert run_heartbeat().runs_redelivered == 1

    lost.refresh_from_db()
    assert (lost.status, lost.redeliveries) == (RunStatus.SUCCESS, 1)
    assert Record.objects.filter(run_id=lost.pk).count() == 1


def test_a_run_nobody_picks_up_fails_after_the_last_redelivery(settings, dummy_backend):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "PICKUP_TIMEOUT": 60, "MAX_REDELIVERIES": 2}
    data_flow = due_flow()
    lost = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.PENDING,
        redeliveries=2,
        activated_at=timezone.now() - datetime.timedelta(minutes=5),
    )

    result = run_heartbeat()

    lost.refresh_from_db()
    assert lost.status == RunStatus.FAILED
    assert lost.error_message == (
        "Never picked up: no worker started the run within 60 seconds of its hand-over, "
        "3 times (2 redeliveries)."
    )
    assert (result.runs_never_picked_up, result.runs_redelivered) == (1, 0)
    assert result.flows_triggered == 1  # the flow is free again: its slot is claimed
    assert [run.pk for run in dummy_backend.enqueued] != [lost.pk]


def test_a_run_waiting_less_than_the_pickup_timeout_is_left_alone(settings, dummy_backend):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "PICKUP_TIMEOUT": 600}
    waiting = DataFlowFactory().create_pending_run()
    DataFlowRun.objects.filter(pk=waiting.pk).update(
        activated_at=timezone.now() - datetime.timedelta(minutes=9)
    )

    assert run_heartbeat().runs_redelivered == 0

    assert DataFlowRun.objects.get().redeliveries == 0
    assert dummy_backend.enqueued == []


def test_a_late_worker_cannot_run_a_run_that_was_never_picked_up(settings):
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 60, "MAX_REDELIVERIES": 0}
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()
    long_ago = timezone.now() - datetime.timedelta(minutes=2)
    DataFlowRun.objects.filter(pk=run.pk).update(created_at=long_ago, activated_at=long_ago)
    assert FlowExecutor.take_back_unclaimed_runs().never_picked_up == 1

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


def test_stuck_is_one_query_that_reads_only_the_runs_past_their_own_timeout(
    settings, django_assert_num_queries
):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 600}
    now = timezone.now()

    def run(status: str, seconds_ago: int, timeout: int | None = None) -> DataFlowRun:
        since = now - datetime.timedelta(seconds=seconds_ago)
        started = since if status == RunStatus.IN_PROGRESS else None
        return DataFlowRunFactory(
            data_flow=DataFlowFactory(timeout=timeout),
            status=status,
            created_at=since,
            started_at=started,
        )

    past_default = run(RunStatus.IN_PROGRESS, 600)  # exactly at the deadline
    run(RunStatus.IN_PROGRESS, 599)
    past_own = run(RunStatus.IN_PROGRESS, 31, timeout=30)
    run(RunStatus.IN_PROGRESS, 601, timeout=3600)
    run(RunStatus.PENDING, 700)  # not stuck: waiting for a worker (redelivered, not reaped)
    run(RunStatus.SUCCESS, 7200)

    with django_assert_num_queries(1):
        stuck = sorted(DataFlowRun.objects.stuck(now).values_list("pk", "effective_timeout"))

    assert stuck == sorted([(past_default.pk, 600), (past_own.pk, 30)])
    assert DataFlowRun.objects.stuck(now).count() == 2


def _renewals_in_a_batch(monkeypatch, flows: int) -> list[list[int]]:
    """Run a heartbeat over ``flows`` due flows; return the runs renewed, at each renewal."""
    renew_pending = RunExecutor.renew_pending
    renewals = []

    def recording(runs):
        renewals.append([run.pk for run in runs])
        renew_pending(runs)

    monkeypatch.setattr(RunExecutor, "renew_pending", staticmethod(recording))
    for _ in range(flows):
        DataFlowFactory(flow="tests.testapp.flows.NoOp")

    run_heartbeat()

    assert set(DataFlowRun.objects.values_list("status", flat=True)) == {RunStatus.SUCCESS}
    return renewals


def test_an_in_process_batch_renews_the_runs_still_waiting_their_turn(settings, monkeypatch):
    # PICKUP_TIMEOUT 0: every run takes longer than a quarter of it, however fast the
    # machine, so the runs still waiting are renewed before each run.
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 0}

    renewals = _renewals_in_a_batch(monkeypatch, 3)

    first, second, third = DataFlowRun.objects.order_by("pk").values_list("pk", flat=True)
    assert renewals == [[first, second, third], [second, third], [third]]


def test_an_in_process_batch_renews_no_more_often_than_a_quarter_of_the_pickup_timeout(
    settings, monkeypatch
):
    # An hour's PICKUP_TIMEOUT: no batch of no-op runs lasts a quarter of it, however slow
    # the machine, so the waiting runs are never renewed (no write per run for nothing).
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 3600}

    assert _renewals_in_a_batch(monkeypatch, 3) == []


def test_renewing_restarts_the_pickup_deadline_of_runs_still_pending():
    long_ago = timezone.now() - datetime.timedelta(days=1)
    waiting, started = (DataFlowFactory().create_pending_run() for _ in range(2))
    DataFlowRun.objects.filter(pk=started.pk).update(status=RunStatus.IN_PROGRESS)
    DataFlowRun.objects.update(activated_at=long_ago)

    FlowExecutor.renew_pending([waiting, started])

    assert DataFlowRun.objects.get(pk=waiting.pk).activated_at > long_ago
    assert DataFlowRun.objects.get(pk=started.pk).activated_at == long_ago


def _columns(run: DataFlowRun) -> dict[str, object]:
    """Every stored column of ``run`` but those unique to one row."""
    unique_to_a_row = {"id", "data_flow_id", "task_id", "updated_at"}
    run.refresh_from_db()
    return {
        field.attname: getattr(run, field.attname)
        for field in DataFlowRun._meta.concrete_fields
        if field.attname not in unique_to_a_row
    }


@pytest.mark.postgres
def test_the_claim_writes_every_column_as_the_orm_would():
    data_flow, twin = DataFlowFactory(queue="reports"), DataFlowFactory(enabled=False)
    now = timezone.now()
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=now)

    with transaction.atomic():
        [claimed] = claim_due_flows(now).runs
    orm = DataFlowRun.objects.create(
        data_flow=twin,
        status=RunStatus.PENDING,
        trigger=RunTrigger.SCHEDULE,
        scheduled_for=now,
        created_at=now,
        activated_at=now,
        queue="reports",
    )

    assert _columns(claimed) == _columns(orm)
    assert len(claimed.task_id) == 32


@pytest.mark.postgres
def test_the_claim_follows_a_changed_field_default(monkeypatch):
    # The raw insert once hard-coded every column's default; a model change went unseen.
    field = DataFlowRun._meta.get_field("error_message")
    monkeypatch.setattr(field, "default", "not run yet")
    monkeypatch.delitem(field.__dict__, "_get_default", raising=False)  # a cached_property
    data_flow = DataFlowFactory()
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=Now())

    with transaction.atomic():
        [claimed] = claim_due_flows().runs

    stored = DataFlowRun.objects.get(pk=claimed.pk).error_message
    field.__dict__.pop("_get_default", None)
    assert stored == "not run yet"
