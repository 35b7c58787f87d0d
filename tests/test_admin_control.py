"""Run control in the admin: the run_dataflow permission, run actions and buttons, steps."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse

from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

FLOWS = reverse("admin:dataflows_dataflow_changelist")
RUNS = reverse("admin:dataflows_dataflowrun_changelist")


def staff_client(client, *codenames):
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def operator(client):
    """Staff who may see flows and runs and run them, but edit nothing."""
    return staff_client(client, "view_dataflow", "view_dataflowrun", "run_dataflow")


@pytest.fixture
def viewer(client):
    return staff_client(client, "view_dataflow", "view_dataflowrun", "change_dataflow")


def run_url(run):
    return reverse("admin:dataflows_dataflowrun_change", args=[run.pk])


def control_url(run, action):
    return reverse("admin:dataflows_dataflowrun_control", args=[run.pk, action])


def input_url(data_flow):
    return reverse("admin:dataflows_dataflow_run_with_input", args=[data_flow.pk])


def shown_messages(response):
    return [str(message) for message in response.context["messages"]]


def in_progress_run(**kwargs):
    run = DataFlowFactory(**kwargs).create_pending_run()
    FlowExecutor._mark_in_progress(run)
    return run


# -- the permission --------------------------------------------------------------------------


def test_run_now_needs_the_run_permission_not_change(viewer):
    data_flow = DataFlowFactory()

    page = viewer.get(FLOWS).content.decode()
    viewer.post(FLOWS, {"action": "run_now", "_selected_action": [data_flow.pk]}, follow=True)

    assert 'value="run_now"' not in page
    assert 'value="run_with_input"' not in page
    assert not DataFlowRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_operator_can_run_now(operator):
    data_flow = DataFlowFactory()

    response = operator.post(
        FLOWS, {"action": "run_now", "_selected_action": [data_flow.pk]}, follow=True
    )

    # The page answers first (the run still queued), then the run runs.
    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.SUCCESS
    assert shown_messages(response)[0].endswith(f"run {run.pk}</a> queued.")


def test_the_run_page_offers_no_controls_without_the_permission(viewer):
    run = DataFlowFactory().create_pending_run()

    page = viewer.get(run_url(run)).content.decode()
    posted = viewer.post(control_url(run, "cancel"))

    assert "dataflows-control-cancel" not in page
    assert posted.status_code == 403
    assert DataFlowRun.objects.get().status == RunStatus.PENDING


# -- Run with input… ----------------------------------------------------------------------------


def test_run_with_input_leads_to_a_form_for_the_selected_flow(operator):
    data_flow = DataFlowFactory()

    response = operator.post(
        FLOWS, {"action": "run_with_input", "_selected_action": [data_flow.pk]}
    )

    assert response.status_code == 302
    assert response["Location"] == input_url(data_flow)
    form = operator.get(input_url(data_flow))
    assert form.status_code == 200
    assert f"Run “{data_flow.name}” with input" in form.content.decode()


def test_run_with_input_wants_exactly_one_flow(operator):
    flows = [DataFlowFactory(), DataFlowFactory()]

    response = operator.post(
        FLOWS,
        {"action": "run_with_input", "_selected_action": [flow.pk for flow in flows]},
        follow=True,
    )

    assert "Select exactly one data flow to run with input." in shown_messages(response)


@pytest.mark.django_db(transaction=True)
def test_run_with_input_starts_a_run_with_that_input(operator):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")

    response = operator.post(input_url(data_flow), {"input": '{"day": "monday"}'}, follow=True)

    run = DataFlowRun.objects.get()
    assert (run.input, run.trigger, run.status) == ({"day": "monday"}, RunTrigger.MANUAL, "success")
    assert run.result == {"input": {"day": "monday"}}
    assert shown_messages(response)[0].endswith(f"run {run.pk}</a> queued.")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{day: 1}", "Enter valid JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", "The run input must be a JSON object"),
    ],
)
def test_run_with_input_refuses_what_is_not_a_json_object(operator, text, error):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")

    response = operator.post(input_url(data_flow), {"input": text})

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not DataFlowRun.objects.exists()


def test_run_with_input_while_a_run_is_active_says_so(operator):
    data_flow = DataFlowFactory()
    data_flow.create_pending_run()

    response = operator.post(input_url(data_flow), {"input": "{}"})

    assert "already has a pending or in-progress run" in response.content.decode()
    assert DataFlowRun.objects.count() == 1


def test_run_with_input_needs_the_run_permission(viewer):
    data_flow = DataFlowFactory()

    assert viewer.get(input_url(data_flow)).status_code == 403
    assert viewer.post(input_url(data_flow), {"input": "{}"}).status_code == 403
    assert not DataFlowRun.objects.exists()


# -- the run page --------------------------------------------------------------------------------


def test_the_run_page_shows_steps_with_status_duration_result_and_error(viewer):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.ThreeSteps", configuration={"fail_in": "two"}
    )
    with pytest.raises(ValueError, match="step two broke"):
        FlowExecutor.execute(data_flow)
    run = DataFlowRun.objects.get()

    page = " ".join(viewer.get(run_url(run)).content.decode().split())

    for name, status, label in (
        ("one", "success", "Success"),
        ("two", "failed", "Failed"),
        ("three", "skipped", "Skipped"),
    ):
        assert f'<td class="field-name"> <p>{name}</p> </td>' in page
        assert f'<span class="dataflows-badge dataflows-badge--{status}">{label}</span>' in page
    assert "&quot;value&quot;: 42" in page  # step one's result
    assert '<pre class="dataflows-pre dataflows-invalid">step two broke</pre>' in page
    assert f"<p>{run.steps.get(name='one').duration_ms} ms</p>" in page


def test_the_run_page_shows_progress_and_input(viewer):
    run = DataFlowRunFactory(
        progress={"done": 3, "total": 10, "message": "files read"}, input={"day": "monday"}
    )

    page = viewer.get(run_url(run)).content.decode()

    assert '<progress value="3" max="10"></progress> 3 of 10 — files read' in page
    assert "&quot;day&quot;: &quot;monday&quot;" in page


@pytest.mark.parametrize(
    ("status", "offered"),
    [
        (RunStatus.PENDING, ["cancel"]),
        (RunStatus.PAUSED, ["cancel", "resume"]),
        (RunStatus.FAILED, ["retry"]),
        (RunStatus.SUCCESS, []),
    ],
)
def test_the_run_page_offers_the_controls_the_state_allows(operator, status, offered):
    run = DataFlowRunFactory(status=status)

    page = operator.get(run_url(run)).content.decode()

    shown = [a for a in ("cancel", "pause", "resume", "retry") if f"dataflows-control-{a}" in page]
    assert shown == offered


def test_an_in_progress_run_offers_cancel_and_pause_until_one_is_requested(operator):
    run = in_progress_run()

    before = operator.get(run_url(run)).content.decode()
    operator.post(control_url(run, "pause"))
    after = operator.get(run_url(run)).content.decode()

    assert "dataflows-control-pause" in before
    assert "dataflows-control-cancel" in before
    assert "dataflows-control-pause" not in after
    assert "dataflows-control-cancel" in after


def test_the_cancel_button_cancels_a_pending_run_and_logs_it(operator):
    run = DataFlowFactory().create_pending_run()

    response = operator.post(control_url(run, "cancel"), follow=True)

    assert response.redirect_chain[-1][0] == run_url(run)
    assert f"Run {run.pk} is now cancelled." in shown_messages(response)
    assert DataFlowRun.objects.get().status == RunStatus.CANCELLED
    assert LogEntry.objects.get().object_id == str(run.pk)


def test_the_cancel_button_on_an_in_progress_run_asks_it_to_stop(operator):
    run = in_progress_run()

    response = operator.post(control_url(run, "cancel"), follow=True)

    assert f"Run {run.pk} was asked to cancel; it stops at its next checkpoint." in shown_messages(
        response
    )
    run.refresh_from_db()
    assert run.status == RunStatus.IN_PROGRESS
    assert run.cancel_requested_at is not None
    assert "Cancel requested at" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_resume_button_hands_the_run_to_the_backend(operator, dummy_backend):
    run = DataFlowRunFactory(status=RunStatus.PAUSED)

    response = operator.post(control_url(run, "resume"), follow=True)

    assert f"Run {run.pk} is now pending." in shown_messages(response)
    assert [queued.pk for queued in dummy_backend.enqueued] == [run.pk]


def test_the_retry_button_starts_a_new_run(operator):
    failed = DataFlowRunFactory(status=RunStatus.FAILED, input={"n": 1})

    response = operator.post(control_url(failed, "retry"), follow=True)

    new = DataFlowRun.objects.exclude(pk=failed.pk).get()
    assert (new.trigger, new.attempt, new.input) == (RunTrigger.RETRY, 2, {"n": 1})
    assert f"Run {failed.pk} was retried as run {new.pk}" in shown_messages(response)[0]


def test_a_control_the_state_forbids_is_an_error_message_not_a_crash(operator):
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)

    response = operator.post(control_url(run, "resume"), follow=True)

    assert shown_messages(response) == [f"Cannot resume run {run.pk}: it is success, not paused."]


def test_a_control_or_input_form_for_a_missing_object_is_404(operator):
    assert operator.post("/admin/dataflows/dataflowrun/abc/control/cancel/").status_code == 404
    assert operator.post("/admin/dataflows/dataflowrun/999/control/cancel/").status_code == 404
    assert operator.get("/admin/dataflows/dataflow/abc/run/").status_code == 404


def test_controls_answer_only_post_and_known_actions(operator):
    run = DataFlowFactory().create_pending_run()

    assert operator.get(control_url(run, "cancel")).status_code == 405
    assert operator.post(control_url(run, "explode")).status_code == 403
    assert DataFlowRun.objects.get().status == RunStatus.PENDING


# -- changelist actions ---------------------------------------------------------------------------


def test_cancel_selected_runs_reports_each(operator):
    pending = DataFlowFactory().create_pending_run()
    finished = DataFlowRunFactory(status=RunStatus.SUCCESS)

    response = operator.post(
        RUNS,
        {"action": "cancel_runs", "_selected_action": [pending.pk, finished.pk]},
        follow=True,
    )

    assert sorted(shown_messages(response)) == sorted(
        [
            f"Run {pending.pk} is now cancelled.",
            f"Cannot cancel run {finished.pk}: it is success, not pending, in_progress or paused.",
        ]
    )


@pytest.mark.parametrize(
    ("action", "status", "expected"),
    [
        ("pause_runs", RunStatus.PENDING, RunStatus.PENDING),
        ("resume_runs", RunStatus.PAUSED, RunStatus.PENDING),
        ("retry_runs", RunStatus.CANCELLED, RunStatus.CANCELLED),
    ],
)
def test_the_run_actions_call_the_executor(operator, dummy_backend, action, status, expected):
    run = DataFlowRunFactory(status=status)

    operator.post(RUNS, {"action": action, "_selected_action": [run.pk]}, follow=True)

    run.refresh_from_db()
    assert run.status == expected
    assert DataFlowRun.objects.count() == (2 if action == "retry_runs" else 1)


def test_the_run_actions_are_not_offered_without_the_permission(viewer):
    DataFlowRunFactory()

    page = viewer.get(RUNS).content.decode()

    assert 'value="cancel_runs"' not in page


# -- the configuration schema on the flow form ------------------------------------------------


def test_the_flow_form_names_the_path_of_a_configuration_schema_error(admin_client):
    from tests.test_admin import valid_form

    response = admin_client.post(
        reverse("admin:dataflows_dataflow_add"),
        valid_form(flow="tests.testapp.flows.WithSchema", configuration='{"batch_size": -1}'),
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "configuration": ["batch_size: -1 is less than the minimum of 1"]
    }
    assert not DataFlow.objects.exists()
