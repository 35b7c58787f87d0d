"""Steps, results, progress, input, state and the configuration schema of a run."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from django_dataflows import signals
from django_dataflows.exceptions import PermanentFlowError
from django_dataflows.executor import FlowExecutor
from django_dataflows.flows import Flow
from django_dataflows.models import DataFlowRun, RunStatus, StepStatus
from tests.factories import DataFlowFactory
from tests.testapp.flows import ThreeSteps
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db


def steps_of(run: DataFlowRun) -> list[tuple[str, str]]:
    return list(run.steps.order_by("position").values_list("name", "status"))


def test_declared_steps_run_in_order_and_each_is_recorded():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")

    result = FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert result == {"one": {"value": 42}, "two": 43, "three": "done"}
    assert run.result == result
    assert steps_of(run) == [("one", "success"), ("two", "success"), ("three", "success")]
    step = run.steps.get(name="two")
    assert step.position == 2
    assert step.result == 43
    assert step.started_at <= step.ended_at
    assert step.duration_ms is not None
    assert list(Record.objects.values_list("label", flat=True)) == [
        "step:one",
        "step:two",
        "step:three",
    ]


def test_step_rows_are_created_when_the_run_starts_the_first_already_in_progress():
    seen = []

    def on_started(run, **kwargs):
        seen.extend(steps_of(run))

    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    signals.run_started.connect(on_started)
    try:
        FlowExecutor.execute(data_flow)
    finally:
        signals.run_started.disconnect(on_started)

    # The default run() starts the first step at once: its row is created in progress.
    assert seen == [("one", "in_progress"), ("two", "pending"), ("three", "pending")]


def test_a_run_that_fails_before_its_first_step_leaves_every_step_skipped():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    run = data_flow.create_pending_run()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ThreeSteps, "configuration_schema", {"required": ["batch_size"]})
        with pytest.raises(PermanentFlowError, match="'batch_size' is a required property"):
            FlowExecutor.execute(data_flow, run=run)

    assert steps_of(run) == [("one", "skipped"), ("two", "skipped"), ("three", "skipped")]
    assert not Record.objects.exists()


def test_a_failing_step_records_its_error_and_the_later_steps_are_skipped():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.ThreeSteps", configuration={"fail_in": "two"}
    )

    with pytest.raises(ValueError, match="step two broke"):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message == "step two broke"
    assert steps_of(run) == [("one", "success"), ("two", "failed"), ("three", "skipped")]
    assert run.steps.get(name="two").error_message == "step two broke"


def test_custom_run_records_with_step_blocks_and_their_results():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.CustomSteps")

    assert FlowExecutor.execute(data_flow) == {"total": 6}

    run = DataFlowRun.objects.get()
    assert list(run.steps.values_list("name", "status", "result")) == [
        ("fetch", "success", [1, 2, 3]),
        ("sum", "success", 6),
    ]


def test_a_step_result_that_is_not_json_fails_the_step_and_the_run():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.BadStepResult")

    with pytest.raises(TypeError, match="The result of step 'make' cannot be stored as JSON"):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert steps_of(run) == [("make", "failed"), ("after", "skipped")]
    assert run.steps.get(name="make").result is None
    assert not Record.objects.filter(label="after ran").exists()


def test_run_step_finished_is_sent_for_each_step_and_callbacks_get_it(settings):
    settings.DATAFLOWS = {"CALLBACKS": ["tests.test_steps.record_event"]}
    events.clear()
    received = []

    def on_step(sender, run, step, **kwargs):
        received.append((step.name, step.status, step.result))
        keys.append(step.pk)

    keys: list[int] = []

    signals.run_step_finished.connect(on_step)
    try:
        FlowExecutor.execute(DataFlowFactory(flow="tests.testapp.flows.ThreeSteps"))
    finally:
        signals.run_step_finished.disconnect(on_step)

    assert received == [
        ("one", "success", {"value": 42}),
        ("two", "success", 43),
        ("three", "success", "done"),
    ]
    run = DataFlowRun.objects.get()
    assert keys == list(run.steps.order_by("position").values_list("pk", flat=True))
    assert events == [
        "run_started",
        "run_step_finished:one",
        "run_step_finished:two",
        "run_step_finished:three",
        "run_finished",
    ]


events: list[str] = []


def record_event(event, **kwargs):
    step = kwargs.get("step")
    events.append(f"{event}:{step.name}" if step is not None else event)


def test_a_flow_without_a_context_runs_its_steps_in_memory():
    flow = ThreeSteps(input={"start": 1})

    assert flow.run() == {"one": {"value": 2}, "two": 3, "three": "done"}
    assert flow.results["one"] == {"value": 2}


def test_a_flow_with_neither_run_nor_steps_says_so():
    class Nothing(Flow):
        abstract = True

    with pytest.raises(NotImplementedError, match="must implement run\\(\\) or set steps"):
        Nothing().run()


# -- progress -------------------------------------------------------------------------------


def test_progress_is_stored_and_the_latest_value_is_written_when_the_run_ends():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.LoopsUntilStopped")
    data_flow.configuration = {"iterations": 5}
    data_flow.save()

    FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.SUCCESS
    # Five calls within a second: the first is written at once, the last with the end.
    assert run.progress == {"done": 5, "total": None, "message": "looping"}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((-1,), "done must be a number of 0 or more"),
        (("3",), "done must be a number of 0 or more"),
        ((1, -5), "total must be a number of 0 or more"),
        ((1, None, 7), "message must be a string"),
    ],
)
def test_progress_refuses_nonsense(args, error):
    with pytest.raises(ValueError, match=error):
        ThreeSteps().progress(*args)


# -- input ------------------------------------------------------------------------------------


def test_trigger_run_stores_the_input_and_the_flow_reads_it(django_capture_on_commit_callbacks):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")

    with django_capture_on_commit_callbacks(execute=True):
        run = data_flow.trigger_run(input={"since": "2026-01-01", "limit": 3})
    run.refresh_from_db()

    assert run.input == {"since": "2026-01-01", "limit": 3}
    assert run.result == {"input": {"since": "2026-01-01", "limit": 3}}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"when": object()}, "cannot be written as JSON"),
        ({"x": float("nan")}, "not finite"),
    ],
)
def test_input_that_is_not_a_json_object_is_refused_and_no_run_is_created(value, message):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")

    with pytest.raises(ValidationError, match=message):
        data_flow.trigger_run(input=value)

    assert not DataFlowRun.objects.exists()


def test_a_scheduled_run_has_empty_input():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")

    assert FlowExecutor.execute(data_flow) == {"input": {}}


# -- state ------------------------------------------------------------------------------------


def test_state_is_saved_with_a_successful_run_and_read_by_the_next():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.KeepsCursor")

    assert FlowExecutor.execute(data_flow) == {"cursor": 1}
    assert FlowExecutor.execute(data_flow) == {"cursor": 2}

    data_flow.refresh_from_db()
    assert data_flow.state == {"cursor": 2}


def test_state_is_never_saved_after_a_failure():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.KeepsCursor")
    FlowExecutor.execute(data_flow)
    data_flow.configuration = {"fail": True}
    data_flow.save()

    with pytest.raises(ValueError, match="failed after moving the cursor"):
        FlowExecutor.execute(data_flow)

    data_flow.refresh_from_db()
    assert data_flow.state == {"cursor": 1}


def test_a_plain_save_never_writes_state():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.KeepsCursor")
    stale = type(data_flow).objects.get(pk=data_flow.pk)
    FlowExecutor.execute(data_flow)

    stale.description = "edited in the admin meanwhile"
    stale.save()

    data_flow.refresh_from_db()
    assert data_flow.state == {"cursor": 1}


def test_state_that_is_not_a_json_object_fails_the_run_and_is_not_saved():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.BadState")

    with pytest.raises(TypeError, match=r"self\.state must be a JSON object"):
        FlowExecutor.execute(data_flow)

    data_flow.refresh_from_db()
    assert data_flow.state == {}
    assert DataFlowRun.objects.get().status == RunStatus.FAILED


# -- configuration schema --------------------------------------------------------------------


def test_full_clean_names_the_path_of_a_configuration_error():
    data_flow = DataFlowFactory.build(
        flow="tests.testapp.flows.WithSchema", configuration={"batch_size": -1}
    )

    with pytest.raises(ValidationError) as caught:
        data_flow.full_clean()

    assert caught.value.message_dict == {
        "configuration": ["batch_size: -1 is less than the minimum of 1"]
    }


def test_full_clean_reports_a_missing_required_property():
    data_flow = DataFlowFactory.build(flow="tests.testapp.flows.WithSchema", configuration={})

    with pytest.raises(ValidationError) as caught:
        data_flow.full_clean()

    assert caught.value.message_dict == {"configuration": ["'batch_size' is a required property"]}


def test_an_invalid_schema_is_a_validation_error_not_a_crash(monkeypatch):
    from tests.testapp.flows import WithSchema

    monkeypatch.setattr(WithSchema, "configuration_schema", {"type": "integer-ish"})
    data_flow = DataFlowFactory.build(
        flow="tests.testapp.flows.WithSchema", configuration={"batch_size": 10}
    )

    with pytest.raises(ValidationError, match="configuration_schema is not a valid JSON Schema"):
        data_flow.full_clean()


def test_a_configuration_matching_the_schema_is_accepted():
    data_flow = DataFlowFactory.build(
        flow="tests.testapp.flows.WithSchema", configuration={"batch_size": 10}
    )

    data_flow.full_clean()


def test_a_row_created_without_full_clean_fails_its_run_with_the_schema_message():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.WithSchema", configuration={"batch_size": "ten"}
    )

    with pytest.raises(PermanentFlowError, match="batch_size: 'ten' is not of type 'integer'"):
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message == (
        "The configuration does not match the flow's configuration_schema: "
        "batch_size: 'ten' is not of type 'integer'"
    )


def test_step_status_choices_cover_the_documented_statuses():
    assert StepStatus.values == [
        "pending",
        "in_progress",
        "success",
        "failed",
        "skipped",
        "cancelled",
    ]


# -- live status: every write to a step stamps its run ----------------------------------------


def test_every_write_to_a_step_stamps_its_runs_updated_at():
    import datetime

    from django_dataflows.models import DataFlowRunStep

    run = DataFlowFactory().create_pending_run()
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    DataFlowRun.objects.filter(pk=run.pk).update(updated_at=long_ago)

    DataFlowRunStep.objects.create(run=run, position=1, name="extract")
    inserted = DataFlowRun.objects.values_list("updated_at", flat=True).get(pk=run.pk)
    DataFlowRun.objects.filter(pk=run.pk).update(updated_at=long_ago)
    DataFlowRunStep.objects.filter(run=run).update(status=StepStatus.IN_PROGRESS)
    updated = DataFlowRun.objects.values_list("updated_at", flat=True).get(pk=run.pk)

    assert inserted > long_ago
    assert updated > long_ago


# -- progress is throttled -----------------------------------------------------------------------


def test_progress_is_written_at_most_about_once_a_second(monkeypatch):
    from django_dataflows.runs.runtime import RunSession

    clock = [100.0]
    monkeypatch.setattr("django_dataflows.runs.runtime.time.monotonic", lambda: clock[0])
    run = DataFlowFactory().create_pending_run()
    session = RunSession(run)

    def stored():
        return DataFlowRun.objects.values_list("progress", flat=True).get(pk=run.pk)

    session.progress(1, 10, "first")
    after_first = stored()
    clock[0] += 0.5
    session.progress(2, 10, "half a second later")
    after_second = stored()
    clock[0] += 0.6
    session.progress(3, 10, "over a second after the first write")

    assert after_first == {"done": 1, "total": 10, "message": "first"}
    assert after_second == after_first
    assert stored() == {"done": 3, "total": 10, "message": "over a second after the first write"}
    assert session.final_fields() == {}


# -- the reaper closes the steps of the runs it ends ---------------------------------------------


def test_a_reaped_run_fails_its_running_step_and_skips_the_rest():
    import datetime

    from django.utils import timezone

    run = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps").create_pending_run()
    FlowExecutor._mark_in_progress(run)  # step one is created in progress; the worker dies

    FlowExecutor.time_out_stuck_runs(timezone.now() + datetime.timedelta(days=1))

    assert steps_of(run) == [("one", "failed"), ("two", "skipped"), ("three", "skipped")]
    assert run.steps.get(name="one").error_message == "The run ended timed_out."
