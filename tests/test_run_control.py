"""Cancel, pause, resume and retry (in one process; tests/test_run_control_races.py races them)."""

from __future__ import annotations

import datetime

import pytest
from django.db.models.functions import Now
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.exceptions import InvalidRunState, RunAlreadyActive, RunInterrupted
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlowRun, RunStatus, RunTrigger
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db


@pytest.fixture
def resume(django_capture_on_commit_callbacks):
    """FlowExecutor.resume() as outside a transaction: the sync backend runs it at once."""

    def resume(run: DataFlowRun) -> DataFlowRun:
        with django_capture_on_commit_callbacks(execute=True):
            FlowExecutor.resume(run)
        run.refresh_from_db()
        return run

    return resume


def steps_of(run: DataFlowRun) -> list[tuple[str, str]]:
    return list(run.steps.order_by("position").values_list("name", "status"))


def labels() -> list[str]:
    return list(Record.objects.order_by("pk").values_list("label", flat=True))


def three_steps(**configuration):
    return DataFlowFactory(flow="tests.testapp.flows.ThreeSteps", configuration=configuration)


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_pending_run_ends_it_at_once():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()

    returned = FlowExecutor.cancel(run, reason="not today")

    assert returned.status == RunStatus.CANCELLED
    assert returned.error_message == "not today"
    assert returned.cancel_requested_at is not None
    assert DataFlowRun.objects.get().status == RunStatus.CANCELLED
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.CANCELLED


def test_cancel_of_an_in_progress_run_stops_it_at_the_next_checkpoint():
    data_flow = three_steps(request="cancel", request_in="one")

    assert FlowExecutor.execute(data_flow) is None

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.CANCELLED
    assert run.error_message == "Cancelled: stopped at a checkpoint."
    assert run.duration_ms is not None
    assert steps_of(run) == [("one", "success"), ("two", "skipped"), ("three", "skipped")]
    assert labels() == ["step:one"]


def test_a_cancel_reached_inside_a_step_cancels_that_step_and_skips_the_rest():
    data_flow = three_steps(request="cancel", request_in="two", checkpoint_in="two")

    assert FlowExecutor.execute(data_flow) is None

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.CANCELLED
    assert steps_of(run) == [("one", "success"), ("two", "cancelled"), ("three", "skipped")]


def test_a_body_whose_run_timed_out_meanwhile_stops_at_its_next_checkpoint():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.LoopsUntilStopped")
    run = data_flow.create_pending_run()

    def reap(run, **kwargs):
        FlowExecutor.time_out_stuck_runs(timezone.now() + datetime.timedelta(days=1))

    signals.run_started.connect(reap)
    try:
        assert FlowExecutor.execute(data_flow, run=run) is None
    finally:
        signals.run_started.disconnect(reap)

    run.refresh_from_db()
    assert run.status == RunStatus.TIMED_OUT
    assert run.result is None
    assert labels() == ["loop started"]


def test_run_finished_is_sent_for_a_cancelled_run():
    finished = []

    def on_finished(run, status, **kwargs):
        finished.append(status)

    signals.run_finished.connect(on_finished)
    try:
        FlowExecutor.execute(three_steps(request="cancel", request_in="two"))
    finally:
        signals.run_finished.disconnect(on_finished)

    assert finished == [RunStatus.CANCELLED]


def test_a_cancel_requested_run_keeps_its_flow_active_until_the_body_stops():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()
    FlowExecutor._mark_in_progress(run)

    FlowExecutor.cancel(run)

    assert DataFlowRun.objects.get().status == RunStatus.IN_PROGRESS
    with pytest.raises(RunAlreadyActive):
        data_flow.trigger_run()


def test_an_interruption_cannot_be_swallowed_by_except_exception():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.SwallowsEverything")

    assert FlowExecutor.execute(data_flow) is None

    assert DataFlowRun.objects.get().status == RunStatus.CANCELLED
    assert issubclass(RunInterrupted, BaseException)
    assert not issubclass(RunInterrupted, Exception)


def test_a_second_cancel_request_is_refused():
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()
    FlowExecutor._mark_in_progress(run)
    FlowExecutor.cancel(run)

    with pytest.raises(InvalidRunState, match="a cancel was already requested") as caught:
        FlowExecutor.cancel(run)

    assert (caught.value.run_id, caught.value.status, caught.value.action) == (
        run.pk,
        RunStatus.IN_PROGRESS,
        "cancel",
    )


def test_a_run_whose_worker_died_after_a_cancel_request_ends_cancelled_at_its_timeout():
    data_flow = DataFlowFactory(timeout=60)
    run = data_flow.create_pending_run()
    FlowExecutor._mark_in_progress(run)
    FlowExecutor.cancel(run)

    assert FlowExecutor.time_out_stuck_runs(timezone.now() + datetime.timedelta(minutes=2)) == 1

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert "no checkpoint was reached within the 60-second timeout" in run.error_message
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.CANCELLED
    data_flow.trigger_run()  # the slot is free again


# -- pause and resume ---------------------------------------------------------------------------


def test_pause_takes_effect_at_the_next_checkpoint_and_keeps_the_flow_active():
    data_flow = three_steps(request="pause", request_in="one")

    assert FlowExecutor.execute(data_flow) is None

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.PAUSED
    assert run.pause_requested_at is None
    assert run.ended_at is None
    assert steps_of(run) == [("one", "success"), ("two", "pending"), ("three", "pending")]
    with pytest.raises(RunAlreadyActive):
        data_flow.trigger_run()
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.PAUSED


def test_resume_skips_the_steps_that_succeeded_and_reads_their_stored_results(resume):
    data_flow = three_steps(request="pause", request_in="one")
    FlowExecutor.execute(data_flow)
    run = DataFlowRun.objects.get()
    data_flow.configuration = {}  # the resumed part must not pause again
    data_flow.save()

    resumed = resume(run)

    assert resumed.status == RunStatus.SUCCESS
    assert resumed.result == {"one": {"value": 42}, "two": 43, "three": "done"}
    assert steps_of(resumed) == [("one", "success"), ("two", "success"), ("three", "success")]
    assert labels() == ["step:one", "step:two", "step:three"]
    assert DataFlowRun.objects.count() == 1


def test_a_resumed_run_keeps_its_input(resume, django_capture_on_commit_callbacks):
    data_flow = three_steps(request="pause", request_in="one")
    with django_capture_on_commit_callbacks(execute=True):
        data_flow.trigger_run(input={"start": 9})
    data_flow.configuration = {}
    data_flow.save()

    resumed = resume(DataFlowRun.objects.get())

    assert resumed.result["one"] == {"value": 10}
    assert resumed.result["two"] == 11


def test_a_declared_step_paused_inside_is_run_again_on_resume(resume):
    data_flow = three_steps(request="pause", request_in="two", checkpoint_in="two")
    FlowExecutor.execute(data_flow)
    run = DataFlowRun.objects.get()
    assert steps_of(run) == [("one", "success"), ("two", "pending"), ("three", "pending")]
    data_flow.configuration = {}
    data_flow.save()

    resumed = resume(run)

    assert resumed.status == RunStatus.SUCCESS
    assert labels() == ["step:one", "step:two", "step:two", "step:three"]


def test_a_step_paused_inside_runs_again_from_its_start_on_resume(resume):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.LoopsUntilStopped")
    run = data_flow.create_pending_run()

    def pause_meanwhile(run, **kwargs):
        FlowExecutor.pause(DataFlowRun.objects.get(pk=run.pk))

    signals.run_started.connect(pause_meanwhile)
    try:
        FlowExecutor.execute(data_flow, run=run)
    finally:
        signals.run_started.disconnect(pause_meanwhile)
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED
    assert run.progress == {}  # paused at the first checkpoint, before any progress

    data_flow.configuration = {"iterations": 2}
    data_flow.save()
    resumed = resume(run)

    assert resumed.status == RunStatus.SUCCESS
    assert resumed.progress == {"done": 2, "total": None, "message": "looping"}
    assert labels() == ["loop started", "loop started"]


def test_the_heartbeat_starts_no_new_run_of_a_flow_whose_run_is_paused():
    from django_dataflows.scheduling import run_heartbeat

    data_flow = three_steps(request="pause", request_in="one")
    FlowExecutor.execute(data_flow)
    type(data_flow).objects.filter(pk=data_flow.pk).update(next_run_at=Now())

    result = run_heartbeat()

    assert (result.flows_due, result.flows_skipped, result.flows_triggered) == (1, 1, 0)
    assert DataFlowRun.objects.get().status == RunStatus.PAUSED


def test_a_paused_run_never_times_out():
    data_flow = three_steps(request="pause", request_in="one")
    FlowExecutor.execute(data_flow)

    assert FlowExecutor.time_out_stuck_runs(timezone.now() + datetime.timedelta(days=30)) == 0
    assert DataFlowRun.objects.get().status == RunStatus.PAUSED


def test_a_resumed_run_waits_for_a_worker_from_its_resume_not_its_creation(settings):
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 60}
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    run = data_flow.create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.PAUSED, created_at=timezone.now() - datetime.timedelta(days=1)
    )
    run.refresh_from_db()

    with pytest.MonkeyPatch.context() as patch:  # keep the resumed run pending
        patch.setattr("django_dataflows.runs.starting.hand_over", lambda run: None)
        FlowExecutor.resume(run)

    assert FlowExecutor.take_back_unclaimed_runs().runs == []
    later = timezone.now() + datetime.timedelta(minutes=2)
    assert [taken.pk for taken in FlowExecutor.take_back_unclaimed_runs(later).runs] == [run.pk]


def test_cancel_of_a_paused_run_ends_it_and_skips_its_remaining_steps():
    FlowExecutor.execute(three_steps(request="pause", request_in="one"))
    run = DataFlowRun.objects.get()

    cancelled = FlowExecutor.cancel(run)

    assert cancelled.status == RunStatus.CANCELLED
    assert steps_of(cancelled) == [("one", "success"), ("two", "skipped"), ("three", "skipped")]


def test_cancel_wins_over_an_earlier_pause_request():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.LoopsUntilStopped")
    run = data_flow.create_pending_run()

    def pause_then_cancel(run, **kwargs):
        FlowExecutor.pause(run)
        FlowExecutor.cancel(run)

    signals.run_started.connect(pause_then_cancel)
    try:
        FlowExecutor.execute(data_flow, run=run)
    finally:
        signals.run_started.disconnect(pause_then_cancel)

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


@pytest.mark.parametrize("status", [RunStatus.PENDING, RunStatus.SUCCESS, RunStatus.PAUSED])
def test_pause_is_refused_unless_the_run_is_in_progress(status):
    run = DataFlowRunFactory(status=status)

    with pytest.raises(InvalidRunState, match=f"Cannot pause run {run.pk}: it is {status}"):
        FlowExecutor.pause(run)


def test_a_second_pause_request_is_refused():
    run = DataFlowFactory().create_pending_run()
    FlowExecutor._mark_in_progress(run)
    FlowExecutor.pause(run)

    with pytest.raises(InvalidRunState, match="a pause was already requested"):
        FlowExecutor.pause(run)


def test_resume_of_a_run_that_is_not_paused_is_refused():
    run = DataFlowFactory().create_pending_run()
    FlowExecutor._mark_in_progress(run)

    with pytest.raises(
        InvalidRunState, match=rf"Cannot resume run {run.pk}: it is in_progress, not paused."
    ):
        FlowExecutor.resume(run)


# -- retry ----------------------------------------------------------------------------------------


def test_retry_starts_a_new_run_with_the_same_input_and_the_next_attempt(
    django_capture_on_commit_callbacks,
):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")
    failed = DataFlowRunFactory(
        data_flow=data_flow, status=RunStatus.FAILED, input={"day": "monday"}, attempt=2
    )
    user = UserFactory()

    with django_capture_on_commit_callbacks(execute=True):
        new = FlowExecutor.retry(failed, user=user)
    new.refresh_from_db()

    assert new.pk != failed.pk
    assert (new.trigger, new.attempt, new.input) == (RunTrigger.RETRY, 3, {"day": "monday"})
    assert new.triggered_by == user
    assert new.status == RunStatus.SUCCESS
    assert new.result == {"input": {"day": "monday"}}


@pytest.mark.parametrize("status", [RunStatus.SUCCESS, RunStatus.PENDING])
def test_retry_of_a_run_that_did_not_fail_is_refused(status):
    run = DataFlowRunFactory(status=status)

    with pytest.raises(InvalidRunState, match="not failed, timed_out or cancelled"):
        FlowExecutor.retry(run)


def test_retry_is_refused_while_the_flow_has_an_active_run():
    data_flow = DataFlowFactory()
    failed = DataFlowRunFactory(data_flow=data_flow, status=RunStatus.FAILED)
    data_flow.create_pending_run()

    with pytest.raises(RunAlreadyActive):
        FlowExecutor.retry(failed)
