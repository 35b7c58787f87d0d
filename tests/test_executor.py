"""FlowExecutor: every acceptance criterion of the flow execution service."""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db.models.signals import post_save
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.exceptions import (
    DataFlowError,
    FlowNotRegistered,
    FlowTimeout,
    InvalidRunState,
    PermanentFlowError,
    RunAlreadyActive,
    RunNotPending,
)
from django_dataflows.executor import FlowExecutor, register_timeout_exception
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger
from django_dataflows.runs.execution import _timeout_exceptions
from tests.factories import DataFlowFactory, DataFlowRunFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db


def test_execute_returns_the_flow_result():
    data_flow = DataFlowFactory(configuration={"label": "a"})

    assert FlowExecutor.execute(data_flow) == {"rows": 1}
    assert FlowExecutor.execute(data_flow) == {"rows": 2}


def test_execute_records_a_successful_run():
    data_flow = DataFlowFactory()
    before = timezone.now()

    FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.data_flow == data_flow
    assert run.status == RunStatus.SUCCESS
    assert run.result == {"rows": 1}
    assert before <= run.started_at <= run.ended_at <= timezone.now()
    assert run.duration == run.ended_at - run.started_at
    assert run.error_message == ""


def test_the_flow_sees_its_configuration_and_context():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.EchoConfiguration", configuration={"batch_size": 5}
    )

    result = FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert result == {
        "configuration": {"batch_size": 5},
        "data_flow": data_flow.name,
        "run_id": run.pk,
        "attempt": 1,
    }


def test_the_run_is_recorded_pending_then_in_progress_while_the_flow_runs():
    seen = []
    data_flow = DataFlowFactory()

    def on_created(sender, instance, created, **kwargs):
        if created:
            seen.append(("created", instance.status, instance.started_at))

    def on_started(run, **kwargs):
        seen.append(("started", DataFlowRun.objects.get(pk=run.pk).status, None))

    post_save.connect(on_created, sender=DataFlowRun)
    signals.run_started.connect(on_started)
    try:
        FlowExecutor.execute(data_flow)
    finally:
        post_save.disconnect(on_created, sender=DataFlowRun)
        signals.run_started.disconnect(on_started)

    assert seen == [
        ("created", RunStatus.PENDING, None),
        ("started", RunStatus.IN_PROGRESS, None),
    ]
    assert DataFlowRun.objects.get().started_at is not None


def test_success_updates_the_data_flow():
    data_flow = DataFlowFactory()

    FlowExecutor.execute(data_flow)

    data_flow.refresh_from_db()
    run = DataFlowRun.objects.get()
    assert data_flow.last_run_status == RunStatus.SUCCESS
    assert data_flow.last_run_at == run.started_at


def test_failure_records_message_and_backtrace_and_reraises():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.Explode", configuration={"message": "bad row 7"}
    )

    with pytest.raises(ValueError, match="bad row 7"):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    data_flow.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error_message == "bad row 7"
    assert "Traceback (most recent call last)" in run.error_backtrace
    assert 'raise ValueError(self.configuration.get("message", "boom"))' in run.error_backtrace
    assert run.ended_at is not None
    assert data_flow.last_run_status == RunStatus.FAILED


def test_unregistered_flow_fails_the_run_without_importing_it():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.not_a_flow")

    with pytest.raises(FlowNotRegistered):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert "'tests.testapp.flows.not_a_flow' is not registered" in run.error_message
    assert not Record.objects.exists()


def test_a_result_that_is_not_json_fails_the_run():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ReturnsObject")

    with pytest.raises(DataFlowError, match="cannot be stored as JSON"):
        FlowExecutor.execute(data_flow)

    assert DataFlowRun.objects.get().status == RunStatus.FAILED


def test_dates_in_a_result_are_stored():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ReturnsDate")

    FlowExecutor.execute(data_flow)

    assert DataFlowRun.objects.get().result == {"day": "2026-01-02"}


def test_execute_takes_a_given_pending_run():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run(trigger=RunTrigger.API)

    FlowExecutor.execute(data_flow, run=run)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.trigger == RunTrigger.API
    assert DataFlowRun.objects.count() == 1


def test_a_run_that_is_no_longer_pending_is_not_executed_again():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()
    FlowExecutor.execute(data_flow, run=run)

    with pytest.raises(RunNotPending, match="is success, not pending"):
        FlowExecutor.execute(data_flow, run=run)

    assert Record.objects.count() == 1


def test_a_run_of_another_flow_is_refused():
    run = DataFlowFactory().create_pending_run()

    with pytest.raises(DataFlowError, match="belongs to another data flow"):
        FlowExecutor.execute(DataFlowFactory(), run=run)


def test_execute_refuses_while_a_run_is_active():
    data_flow = DataFlowFactory()
    data_flow.create_pending_run()

    with pytest.raises(RunAlreadyActive, match="already has a pending or in-progress run"):
        FlowExecutor.execute(data_flow)

    assert not Record.objects.exists()


def reap_everything(run, **kwargs):
    """As a heartbeat long after the run's timeout would: end every active run."""
    FlowExecutor.time_out_stuck_runs(timezone.now() + datetime.timedelta(days=1))


def test_a_late_finish_does_not_overwrite_a_timed_out_run():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()

    signals.run_started.connect(reap_everything)
    try:
        assert FlowExecutor.execute(data_flow, run=run) == {"rows": 1}
    finally:
        signals.run_started.disconnect(reap_everything)

    run.refresh_from_db()
    assert run.status == RunStatus.TIMED_OUT
    assert run.result is None


def test_a_late_failure_does_not_overwrite_a_timed_out_run():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.Explode")
    run = data_flow.create_pending_run()

    signals.run_started.connect(reap_everything)
    try:
        with pytest.raises(ValueError, match="boom"):
            FlowExecutor.execute(data_flow, run=run)
    finally:
        signals.run_started.disconnect(reap_everything)

    assert DataFlowRun.objects.get().status == RunStatus.TIMED_OUT


def test_a_body_that_never_reaches_a_checkpoint_keeps_its_real_outcome():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()

    def cancel_meanwhile(run, **kwargs):
        FlowExecutor.cancel(DataFlowRun.objects.get(pk=run.pk), reason="operator stop")

    signals.run_started.connect(cancel_meanwhile)
    try:
        FlowExecutor.execute(data_flow, run=run)
    finally:
        signals.run_started.disconnect(cancel_meanwhile)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.cancel_requested_at is not None
    assert run.result == {"rows": 1}


def test_cancel_of_a_finished_run_is_refused_and_changes_nothing():
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)

    with pytest.raises(InvalidRunState, match=rf"Cannot cancel run {run.pk}: it is success"):
        FlowExecutor.cancel(run)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.cancel_requested_at is None


def test_a_timeout_ends_the_run_timed_out_not_failed():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.TimesOut")

    with pytest.raises(FlowTimeout):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    data_flow.refresh_from_db()
    assert run.status == RunStatus.TIMED_OUT
    assert run.error_message == "took longer than allowed"
    assert data_flow.last_run_status == RunStatus.TIMED_OUT


def test_a_backend_can_register_its_own_timeout_exception():
    register_timeout_exception(ZeroDivisionError)
    register_timeout_exception(ZeroDivisionError)  # registering twice is harmless
    data_flow = DataFlowFactory(flow="tests.testapp.flows.DividesByZero")
    try:
        with pytest.raises(ZeroDivisionError):
            FlowExecutor.execute(data_flow)
    finally:
        _timeout_exceptions.remove(ZeroDivisionError)

    assert DataFlowRun.objects.get().status == RunStatus.TIMED_OUT


def test_signals_carry_flow_name_run_id_attempt_and_duration():
    events = []
    data_flow = DataFlowFactory(name="orders")

    def record(_event, **kwargs):
        events.append(
            (
                kwargs["flow_name"],
                kwargs["run_id"],
                kwargs["attempt"],
                kwargs["status"],
                kwargs["duration"],
            )
        )

    receivers = {
        signals.run_started: lambda sender, **kw: record("started", **kw),
        signals.run_finished: lambda sender, **kw: record("finished", **kw),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    try:
        FlowExecutor.execute(data_flow)
    finally:
        for signal, receiver in receivers.items():
            signal.disconnect(receiver)

    run = DataFlowRun.objects.get()
    assert events[0] == ("orders", run.pk, 1, RunStatus.IN_PROGRESS, None)
    assert events[1][:4] == ("orders", run.pk, 1, RunStatus.SUCCESS)
    assert isinstance(events[1][4], datetime.timedelta)


calls: list[tuple[str, str, int]] = []


def record_callback(event, *, flow_name, run_id, **kwargs):
    calls.append((event, flow_name, run_id))


def failing_callback(event, **kwargs):
    raise RuntimeError("monitoring is down")


def test_callbacks_from_settings_are_called_and_a_failing_one_is_harmless(settings, caplog):
    settings.DATAFLOWS = {
        "CALLBACKS": [
            "tests.test_executor.failing_callback",
            "tests.test_executor.record_callback",
        ]
    }
    calls.clear()
    data_flow = DataFlowFactory(name="nightly")

    assert FlowExecutor.execute(data_flow) == {"rows": 1}

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.SUCCESS
    assert calls == [("run_started", "nightly", run.pk), ("run_finished", "nightly", run.pk)]
    assert "monitoring is down" in caplog.text


def test_a_failing_signal_receiver_does_not_break_the_run(caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.run_finished.connect(broken)
    try:
        FlowExecutor.execute(DataFlowFactory())
    finally:
        signals.run_finished.disconnect(broken)

    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert "receiver bug" in caplog.text


def test_a_finished_run_does_not_overwrite_the_state_of_a_newer_active_run():
    data_flow = DataFlowFactory()
    old = data_flow.create_pending_run()
    FlowExecutor._mark_in_progress(old)
    reap_everything(old)  # its worker looked lost: the flow is free; the body may go on
    newer = data_flow.create_pending_run()

    FlowExecutor._record_success(old, {"late": True})  # the old body returns late

    data_flow.refresh_from_db()
    old.refresh_from_db()
    newer.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.PENDING
    assert (old.status, old.result) == (RunStatus.TIMED_OUT, None)
    assert newer.status == RunStatus.PENDING


@pytest.mark.parametrize("configuration", ["abc", [1, 2], 7])
def test_a_configuration_that_is_not_an_object_fails_with_the_forms_message(configuration):
    data_flow = DataFlowFactory()
    DataFlow.objects.filter(pk=data_flow.pk).update(configuration=configuration)
    data_flow.refresh_from_db()

    with pytest.raises(PermanentFlowError):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message == 'configuration: Enter a JSON object, such as {"batch_size": 500}.'
    with pytest.raises(ValidationError) as form_error:
        data_flow.full_clean()
    assert form_error.value.message_dict["configuration"] == [
        'Enter a JSON object, such as {"batch_size": 500}.'
    ]
    assert not Record.objects.exists()
