"""DataFlow and DataFlowRun: validation, schedule bookkeeping, trigger_run, constraints."""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone

from django_dataflows.exceptions import FlowNotRegistered, RunAlreadyActive
from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    next_slot_after,
)
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory
from tests.testapp import flows as test_flows
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db


def make_flow(**fields):
    defaults = {"name": "orders", "flow": "tests.testapp.flows.CountRows", "run_interval": 60}
    return DataFlow(**(defaults | fields))


def errors_of(data_flow):
    with pytest.raises(ValidationError) as info:
        data_flow.full_clean()
    return info.value.message_dict


# -- validation ---------------------------------------------------------------------


def test_a_valid_flow_passes_validation():
    make_flow(configuration={"batch_size": 10}, queue="reports").full_clean()


def test_name_is_required():
    assert "name" in errors_of(make_flow(name=""))


def test_name_is_unique():
    DataFlowFactory(name="orders")

    assert "name" in errors_of(make_flow(name="orders"))
    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowFactory(name="orders")


@pytest.mark.parametrize("interval", [0, -5, "often", 1.5])
def test_run_interval_must_be_a_positive_integer(interval):
    assert "run_interval" in errors_of(make_flow(run_interval=interval))


def test_run_interval_zero_is_refused_by_the_database_too():
    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlow.objects.create(name="x", flow="tests.testapp.flows.CountRows", run_interval=0)


@pytest.mark.parametrize("configuration", [[1, 2], "text", 3, None])
def test_configuration_must_be_a_json_object(configuration):
    assert "configuration" in errors_of(make_flow(configuration=configuration))


@pytest.mark.parametrize(
    "path", ["os.system", "tests.testapp.flows.not_a_flow", "tests.testapp.flows.AbstractBase", ""]
)
def test_only_registered_flows_are_accepted(path):
    errors = errors_of(make_flow(flow=path))

    assert "flow" in errors
    assert not Record.objects.exists()


@pytest.mark.parametrize("queue", ["bad queue", "-lead", "x" * 101, "émoji"])
def test_queue_names_are_validated(queue):
    assert "queue" in errors_of(make_flow(queue=queue))


def test_queue_must_be_allowed_when_a_list_is_configured(settings):
    settings.DATAFLOWS = {"ALLOWED_QUEUES": ["default", "reports"]}

    make_flow(queue="reports").full_clean()
    assert "ALLOWED_QUEUES" in errors_of(make_flow(queue="other"))["queue"][0]


def test_an_invalid_run_status_is_refused():
    run = DataFlowRunFactory.build(data_flow=DataFlowFactory(), status="exploded")

    with pytest.raises(ValidationError) as info:
        run.full_clean()
    assert "status" in info.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        run.save()


# -- flow class resolution ----------------------------------------------------------


def test_flow_class_returns_the_registered_class():
    assert DataFlowFactory().flow_class is test_flows.CountRows


def test_flow_class_of_an_unregistered_path_raises_without_importing():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.not_a_flow")

    with pytest.raises(FlowNotRegistered, match="not registered"):
        _ = data_flow.flow_class


def test_subclasses_of_abstract_flows_are_registered():
    assert DataFlowFactory(flow="tests.testapp.flows.FromAbstractBase").flow_class.describe() == (
        "Registered: a concrete subclass of an abstract base."
    )


# -- schedule -----------------------------------------------------------------------


def test_a_new_flow_is_due_at_once():
    data_flow = DataFlowFactory()

    assert list(DataFlow.objects.due_to_run()) == [data_flow]


def test_disabled_flows_are_never_due():
    DataFlowFactory(enabled=False)

    assert not DataFlow.objects.due_to_run().exists()


def test_a_flow_is_not_due_before_its_interval_has_passed():
    data_flow = DataFlowFactory(run_interval=60)
    data_flow.trigger_run()

    now = timezone.now()
    assert not DataFlow.objects.due_to_run(now).exists()
    assert list(DataFlow.objects.due_to_run(now + datetime.timedelta(seconds=61))) == [data_flow]


def test_changing_the_interval_moves_the_next_run():
    data_flow = DataFlowFactory(run_interval=3600)
    last_run = timezone.now() - datetime.timedelta(minutes=10)
    DataFlow.objects.filter(pk=data_flow.pk).update(
        last_run_at=last_run, next_run_at=last_run + datetime.timedelta(hours=1)
    )
    data_flow.refresh_from_db()

    data_flow.run_interval = 60
    data_flow.save()

    data_flow.refresh_from_db()
    # Ten minutes since the last run is more than the new interval: due now, not in 50 min.
    assert data_flow.next_run_at <= timezone.now()
    assert list(DataFlow.objects.due_to_run()) == [data_flow]


def test_a_stale_copy_saved_late_does_not_undo_a_heartbeat_claim():
    data_flow = DataFlowFactory(run_interval=60)
    stale = DataFlow.objects.get(pk=data_flow.pk)  # e.g. an admin form being edited
    now = timezone.now()  # both heartbeats in one slot, however slow the machine
    run_heartbeat(now=now)
    claimed = DataFlow.objects.get(pk=data_flow.pk)

    stale.description = "edited meanwhile"
    stale.save()

    data_flow.refresh_from_db()
    assert data_flow.description == "edited meanwhile"
    assert data_flow.next_run_at == claimed.next_run_at
    assert data_flow.last_run_status == claimed.last_run_status
    # The next heartbeat neither fails nor claims the slot again.
    assert run_heartbeat(now=now).flows_triggered == 0


def test_re_enabling_a_long_disabled_flow_makes_it_due_now():
    data_flow = DataFlowFactory(run_interval=60, enabled=False)
    DataFlow.objects.filter(pk=data_flow.pk).update(
        last_run_at=timezone.now() - datetime.timedelta(days=2),
        next_run_at=Now() + datetime.timedelta(days=5),
    )
    data_flow.refresh_from_db()

    data_flow.enabled = True
    data_flow.save(update_fields=["enabled"])

    assert list(DataFlow.objects.due_to_run()) == [data_flow]


def test_saving_other_fields_keeps_the_next_run():
    data_flow = DataFlowFactory()
    later = timezone.now() + datetime.timedelta(hours=1)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=later)
    data_flow.refresh_from_db()

    data_flow.description = "changed"
    data_flow.save()

    data_flow.refresh_from_db()
    assert data_flow.next_run_at == later


def test_upcoming_runs_lists_the_next_times():
    data_flow = DataFlowFactory(run_interval=300)
    start = timezone.now() + datetime.timedelta(minutes=1)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=start)
    data_flow.refresh_from_db()

    times = data_flow.upcoming_runs(3)

    assert times == [start + datetime.timedelta(seconds=300 * i) for i in range(3)]
    data_flow.enabled = False
    assert data_flow.upcoming_runs() == []


@pytest.mark.parametrize(
    ("minutes_late", "expected_minutes"),
    [(-1, 0), (0, 5), (4, 5), (5, 10), (60 * 24, 60 * 24 + 5)],
)
def test_next_slot_stays_on_the_grid_and_skips_missed_slots(minutes_late, expected_minutes):
    slot = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    now = slot + datetime.timedelta(minutes=minutes_late)

    assert next_slot_after(slot, 300, now) == slot + datetime.timedelta(minutes=expected_minutes)


# -- trigger_run --------------------------------------------------------------------


def test_trigger_run_executes_with_the_sync_backend_after_commit(
    django_capture_on_commit_callbacks,
):
    data_flow = DataFlowFactory()

    with django_capture_on_commit_callbacks(execute=True):
        run = data_flow.trigger_run()

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.result == {"rows": 1}
    assert run.trigger == RunTrigger.MANUAL


def test_trigger_run_does_nothing_until_the_transaction_commits(django_capture_on_commit_callbacks):
    data_flow = DataFlowFactory()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = data_flow.trigger_run()

    assert len(callbacks) == 1
    assert DataFlowRun.objects.get(pk=run.pk).status == RunStatus.PENDING
    assert not Record.objects.exists()


def test_trigger_run_records_trigger_and_user(django_capture_on_commit_callbacks):
    user = UserFactory()
    data_flow = DataFlowFactory()

    with django_capture_on_commit_callbacks(execute=True):
        run = data_flow.trigger_run(trigger=RunTrigger.API, user=user)

    assert (run.trigger, run.triggered_by) == (RunTrigger.API, user)


def test_trigger_run_sets_last_run_and_pushes_the_schedule(dummy_backend):
    data_flow = DataFlowFactory(run_interval=600)
    before = timezone.now()

    run = data_flow.trigger_run()

    data_flow.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert data_flow.last_run_status == RunStatus.PENDING
    assert data_flow.last_run_at >= before
    assert data_flow.next_run_at >= before + datetime.timedelta(seconds=600)


def test_a_second_trigger_while_a_run_is_active_raises(
    dummy_backend, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(name="orders")
    with django_capture_on_commit_callbacks(execute=True):
        data_flow.trigger_run()

    with pytest.raises(RunAlreadyActive, match="'orders' already has"):
        data_flow.trigger_run()

    assert DataFlowRun.objects.count() == 1
    assert len(dummy_backend.enqueued) == 1


def test_the_database_refuses_two_active_runs_for_one_flow():
    data_flow = DataFlowFactory()
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.IN_PROGRESS)

    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowRunFactory(data_flow=data_flow, status=RunStatus.PENDING)


def test_finished_runs_do_not_block_a_new_one():
    data_flow = DataFlowFactory()
    for status in (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT):
        DataFlowRunFactory(data_flow=data_flow, status=status)

    assert data_flow.create_pending_run().status == RunStatus.PENDING


def test_one_run_per_schedule_slot():
    data_flow = DataFlowFactory()
    slot = timezone.now()
    DataFlowRunFactory(data_flow=data_flow, scheduled_for=slot)

    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowRunFactory(data_flow=data_flow, scheduled_for=slot)


def test_duration_is_none_until_the_run_has_ended():
    started = timezone.now()
    run = DataFlowRunFactory(started_at=started, ended_at=None)
    assert run.duration is None

    run.ended_at = started + datetime.timedelta(seconds=90)
    assert run.duration == datetime.timedelta(seconds=90)


def test_runs_are_listed_newest_first_and_deleted_with_their_flow():
    data_flow = DataFlowFactory()
    old = DataFlowRunFactory(
        data_flow=data_flow, created_at=timezone.now() - datetime.timedelta(days=1)
    )
    new = DataFlowRunFactory(data_flow=data_flow)

    assert list(data_flow.runs.all()) == [new, old]
    data_flow.delete()
    assert not DataFlowRun.objects.exists()


def test_string_forms():
    data_flow = DataFlowFactory(name="orders")
    run = DataFlowRunFactory(data_flow=data_flow, status=RunStatus.FAILED)

    assert str(data_flow) == "orders"
    assert str(run) == f"orders #{run.pk} (failed)"


def test_a_refused_run_inside_a_transaction_is_recorded_not_raised_at_commit(
    settings, django_capture_on_commit_callbacks
):
    settings.DATAFLOWS = {"BACKEND": "tests.test_backends.RefusingBackend"}
    data_flow = DataFlowFactory()

    with django_capture_on_commit_callbacks(execute=True):
        run = data_flow.trigger_run()

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error_message.startswith("Could not enqueue the run")


def test_a_refused_run_outside_a_transaction_raises(settings, transactional_db):
    from django_dataflows.exceptions import EnqueueFailed

    settings.DATAFLOWS = {"BACKEND": "tests.test_backends.RefusingBackend"}
    data_flow = DataFlowFactory()

    with pytest.raises(EnqueueFailed):
        data_flow.trigger_run()

    assert data_flow.runs.get().status == RunStatus.FAILED


def test_trigger_run_outside_a_transaction_returns_the_finished_run(transactional_db):
    run = DataFlowFactory().trigger_run()

    assert run.status == RunStatus.SUCCESS
    assert run.result == {"rows": 1}
