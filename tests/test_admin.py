"""The admin: pages, the flow form, actions, permissions, the health box, query counts."""

from __future__ import annotations

import datetime
import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.messages import constants as message_levels
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_dataflows.admin import describe_interval, format_duration
from django_dataflows.backends.base import BaseBackend
from django_dataflows.models import DataFlow, DataFlowRun, Heartbeat, RunStatus, RunTrigger
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

FLOWS = reverse("admin:dataflows_dataflow_changelist")
ADD_FLOW = reverse("admin:dataflows_dataflow_add")
RUNS = reverse("admin:dataflows_dataflowrun_changelist")


def flow_url(data_flow):
    return reverse("admin:dataflows_dataflow_change", args=[data_flow.pk])


def run_url(run):
    return reverse("admin:dataflows_dataflowrun_change", args=[run.pk])


def ago(**kwargs):
    return timezone.now() - datetime.timedelta(**kwargs)


def staff_client(client, *codenames):
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client(client):
    """Staff who may look at flows and runs but change nothing."""
    return staff_client(client, "view_dataflow", "view_dataflowrun")


def post_action(client, action, *data_flows):
    return client.post(
        FLOWS,
        {"action": action, "_selected_action": [flow.pk for flow in data_flows]},
        follow=True,
    )


def shown_messages(response):
    return [(message.level, str(message)) for message in response.context["messages"]]


def form_errors(response):
    return response.context["adminform"].form.errors


def health_count(response, element_id):
    match = re.search(rf'id="{element_id}" data-count="(\d+)"', response.content.decode())
    assert match, f"#{element_id} is not on the page"
    return int(match.group(1))


class RefusingBackend(BaseBackend):
    """A backend whose broker is down."""

    def enqueue(self, run):
        raise ConnectionError("broker unreachable")


# -- presentation helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "every second"),
        (45, "every 45 seconds"),
        (60, "every minute"),
        (90, "every 1 minute 30 seconds"),
        (300, "every 5 minutes"),
        (3600, "every hour"),
        (3660, "every 1 hour 1 minute"),
        (86400, "every day"),
        (2 * 86400, "every 2 days"),
    ],
)
def test_intervals_read_as_words(seconds, text):
    assert describe_interval(seconds) == text


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (None, ""),
        (datetime.timedelta(milliseconds=850), "850 ms"),
        (datetime.timedelta(seconds=12.34), "12.3 s"),
        (datetime.timedelta(minutes=4, seconds=5), "4 min 5 s"),
        (datetime.timedelta(hours=2, minutes=3), "2 h 3 min"),
    ],
)
def test_durations_read_as_words(duration, text):
    assert format_duration(duration) == text


# -- the data flow list -----------------------------------------------------------------


def test_the_flow_list_shows_schedule_status_and_success_rate(admin_client):
    data_flow = DataFlowFactory(
        name="orders",
        run_interval=300,
        last_run_status=RunStatus.FAILED,
        last_run_at=ago(minutes=3),
    )
    for status in (RunStatus.SUCCESS, RunStatus.SUCCESS, RunStatus.SUCCESS, RunStatus.FAILED):
        DataFlowRunFactory(data_flow=data_flow, status=status)
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.CANCELLED)  # not counted
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.FAILED, created_at=ago(days=8))

    response = admin_client.get(FLOWS)

    assert response.status_code == 200
    html = response.content.decode()
    assert "every 5 minutes" in html
    assert '<span class="dataflows-badge dataflows-badge--failed">Failed</span>' in html
    assert "3\xa0minutes ago" in html  # Django keeps number and unit together
    assert "75%" in html
    assert "3 of the 4 runs finished in the last 7 days succeeded" in html
    assert "success rate (7 days)" in html.lower()


def test_a_flow_that_never_ran_says_so(admin_client):
    DataFlowFactory(name="fresh")

    html = admin_client.get(FLOWS).content.decode()

    assert "never run" in html
    assert "no runs" in html
    assert "due now" in html


def test_a_disabled_flow_has_no_next_run(admin_client):
    DataFlowFactory(name="paused", enabled=False)

    assert ">disabled<" in admin_client.get(FLOWS).content.decode()


def test_an_unregistered_flow_is_flagged_in_the_list(admin_client):
    DataFlowFactory(flow="gone.flows.Removed")

    assert "gone.flows.Removed <span" in admin_client.get(FLOWS).content.decode()


def _queries_of(client, url, params):
    with CaptureQueriesContext(connection) as queries:
        client.get(url, params)
    return queries.captured_queries


def test_the_list_can_be_sorted_by_success_rate(admin_client):
    half = DataFlowFactory(name="half")
    DataFlowRunFactory(data_flow=half, status=RunStatus.SUCCESS)
    DataFlowRunFactory(data_flow=half, status=RunStatus.FAILED)
    always = DataFlowFactory(name="always")
    DataFlowRunFactory(data_flow=always, status=RunStatus.SUCCESS)
    # success_rate's position among the change list's columns (the action checkbox is 0).
    column = "9"

    ascending = admin_client.get(FLOWS, {"o": column})
    descending = admin_client.get(FLOWS, {"o": f"-{column}"})

    def order(response):
        return [flow.name for flow in response.context["cl"].result_list]

    assert order(ascending) == ["half", "always"]
    assert order(descending) == ["always", "half"]
    # Unsorted, the list reads no run to order its flows (the rates come from rollups).
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(FLOWS)
    listed = [q["sql"] for q in queries if 'FROM "dataflows_dataflow" ORDER BY' in q["sql"]]
    assert listed
    assert not [sql for sql in listed if "recent_rated" in sql]
    sorted_queries = [q["sql"] for q in _queries_of(admin_client, FLOWS, {"o": column})]
    assert [sql for sql in sorted_queries if "recent_rated" in sql]


def test_the_list_filters_by_last_status_and_searches_descriptions(admin_client):
    DataFlowFactory(name="ok", last_run_status=RunStatus.SUCCESS, description="nightly sums")
    DataFlowFactory(name="broken", last_run_status=RunStatus.FAILED, description="feed import")

    by_status = admin_client.get(FLOWS, {"last_run_status__exact": RunStatus.FAILED})
    by_search = admin_client.get(FLOWS, {"q": "nightly"})

    assert [flow.name for flow in by_status.context["cl"].result_list] == ["broken"]
    assert [flow.name for flow in by_search.context["cl"].result_list] == ["ok"]


# -- the data flow form -----------------------------------------------------------------


def valid_form(**overrides):
    data = {
        "name": "orders",
        "description": "",
        "flow": "tests.testapp.flows.CountRows",
        "enabled": "on",
        "run_interval": "300",
        "configuration": '{"label": "orders"}',
        "queue": "",
        "max_retries": "",
        "timeout": "",
    }
    return {**data, **overrides}


def test_the_add_page_offers_registered_flows_with_their_descriptions(admin_client):
    response = admin_client.get(ADD_FLOW)

    assert response.status_code == 200
    html = response.content.decode()
    assert (
        '<option value="tests.testapp.flows.Explode" title="Always fail with a ValueError.">'
        "tests.testapp.flows.Explode — Always fail with a ValueError.</option>"
    ) in html
    assert "<code>tests.testapp.flows.CountRows</code>: Record one row per run" in html
    assert "tests.testapp.flows.AbstractBase" not in html


def test_adding_a_flow_saves_it(admin_client):
    response = admin_client.post(ADD_FLOW, valid_form())

    assert response.status_code == 302
    data_flow = DataFlow.objects.get()
    assert data_flow.flow == "tests.testapp.flows.CountRows"
    assert data_flow.configuration == {"label": "orders"}
    assert data_flow.run_interval == 300


def test_an_empty_configuration_is_an_empty_object(admin_client):
    admin_client.post(ADD_FLOW, valid_form(configuration=""))

    assert DataFlow.objects.get().configuration == {}


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("flow", "tests.testapp.flows.not_a_flow", "Select a valid choice."),
        ("flow", "os.system", "Select a valid choice."),
        ("run_interval", "0", "greater than or equal to 1"),
        ("run_interval", "-5", "greater than or equal to"),
        ("configuration", '{"label": }', "Enter valid JSON: Expecting value (line 1, column 11)."),
        ("configuration", "[1, 2]", "Enter a JSON object"),
        ("configuration", '"text"', "Enter a JSON object"),
        ("queue", "no spaces allowed", "is not a valid queue name"),
        ("name", "", "This field is required."),
    ],
)
def test_bad_input_re_renders_the_form_with_an_error_and_saves_nothing(
    admin_client, field, value, error
):
    response = admin_client.post(ADD_FLOW, valid_form(**{field: value}))

    assert response.status_code == 200
    assert error in " ".join(form_errors(response)[field])
    assert not DataFlow.objects.exists()


def test_malformed_json_is_shown_again_as_typed(admin_client):
    response = admin_client.post(ADD_FLOW, valid_form(configuration='{"batch": 5,}'))

    assert "{&quot;batch&quot;: 5,}</textarea>" in response.content.decode()


def test_a_queue_outside_allowed_queues_is_refused(admin_client, settings):
    settings.DATAFLOWS = {"ALLOWED_QUEUES": ["default", "reports"]}

    response = admin_client.post(ADD_FLOW, valid_form(queue="elsewhere"))

    assert "not in DATAFLOWS['ALLOWED_QUEUES']" in " ".join(form_errors(response)["queue"])
    assert not DataFlow.objects.exists()


def test_the_configuration_is_edited_as_indented_json(admin_client):
    data_flow = DataFlowFactory(configuration={"options": {"batch": 5}})

    html = admin_client.get(flow_url(data_flow)).content.decode()

    assert "{\n  &quot;options&quot;: {\n    &quot;batch&quot;: 5\n  }\n}</textarea>" in html


def test_an_unregistered_stored_flow_stays_selected_and_is_marked_invalid(admin_client):
    data_flow = DataFlowFactory(flow="gone.flows.Removed")

    html = admin_client.get(flow_url(data_flow)).content.decode()

    assert (
        '<option value="gone.flows.Removed" selected>gone.flows.Removed (not registered)</option>'
    ) in html
    assert "The stored flow gone.flows.Removed is not registered" in html


def test_saving_an_unregistered_stored_flow_is_refused_not_changed(admin_client):
    data_flow = DataFlowFactory(flow="gone.flows.Removed", run_interval=60)

    response = admin_client.post(
        flow_url(data_flow), valid_form(name=data_flow.name, flow="gone.flows.Removed")
    )

    assert response.status_code == 200
    assert "is not a registered flow" in " ".join(form_errors(response)["flow"])
    data_flow.refresh_from_db()
    assert (data_flow.flow, data_flow.run_interval) == ("gone.flows.Removed", 60)


def test_choosing_a_registered_flow_repairs_it(admin_client):
    data_flow = DataFlowFactory(flow="gone.flows.Removed")

    response = admin_client.post(flow_url(data_flow), valid_form(name=data_flow.name))

    assert response.status_code == 302
    data_flow.refresh_from_db()
    assert data_flow.flow == "tests.testapp.flows.CountRows"


# -- the data flow page -----------------------------------------------------------------


def test_the_flow_page_shows_the_last_ten_runs_and_links_to_the_rest(admin_client):
    data_flow = DataFlowFactory()
    runs = [
        DataFlowRunFactory(data_flow=data_flow, created_at=ago(hours=12 - i)) for i in range(12)
    ]

    response = admin_client.get(flow_url(data_flow))

    assert response.status_code == 200
    html = response.content.decode()
    shown = [run.pk for run in runs if f'<a href="{run_url(run)}">{run.pk}</a>' in html]
    assert shown == [run.pk for run in runs[2:]]
    history = f"{RUNS}?data_flow__id__exact={data_flow.pk}"
    assert f'href="{history}"' in html
    assert "See the whole history (12 runs)" in html


def test_the_run_history_link_filters_the_runs_of_that_flow(admin_client):
    data_flow = DataFlowFactory()
    mine = DataFlowRunFactory(data_flow=data_flow)
    DataFlowRunFactory()

    response = admin_client.get(RUNS, {"data_flow__id__exact": data_flow.pk})

    assert list(response.context["cl"].result_list) == [mine]


def test_the_flow_page_lists_the_next_five_scheduled_times(admin_client):
    data_flow = DataFlowFactory(run_interval=3600)

    response = admin_client.get(flow_url(data_flow))

    upcoming = response.context["upcoming_runs"]
    assert len(upcoming) == 5
    assert upcoming[1][0] - upcoming[0][0] == datetime.timedelta(hours=1)
    assert "in 1\xa0hour" in response.content.decode()


def test_a_disabled_flow_page_has_no_scheduled_times(admin_client):
    data_flow = DataFlowFactory(enabled=False)

    assert (
        "None: the data flow is disabled." in admin_client.get(flow_url(data_flow)).content.decode()
    )


def test_backtraces_on_the_flow_page_need_the_run_view_permission(client, admin_client):
    data_flow = DataFlowFactory()
    DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.FAILED,
        error_message="boom",
        error_backtrace="Traceback (most recent call last):\nValueError: secret detail",
    )
    flows_only = staff_client(client, "view_dataflow")

    restricted = flows_only.get(flow_url(data_flow)).content.decode()
    full = admin_client.get(flow_url(data_flow)).content.decode()

    assert "boom" in restricted
    assert "secret detail" not in restricted
    assert "See the whole history" not in restricted
    assert "secret detail" in full


# -- actions ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_now_answers_with_the_queued_run_then_runs_it(admin_client, admin_user):
    data_flow = DataFlowFactory(name="orders")

    response = post_action(admin_client, "run_now", data_flow)

    # The in-process backend runs it once the page has been sent (the test client closes
    # the response as a server does), so the page could only say it was queued.
    run = DataFlowRun.objects.get()
    assert (run.status, run.trigger, run.triggered_by) == (
        RunStatus.SUCCESS,
        RunTrigger.MANUAL,
        admin_user,
    )
    assert shown_messages(response) == [
        (message_levels.INFO, f'“orders”: <a href="{run_url(run)}">run {run.pk}</a> queued.')
    ]


@pytest.mark.django_db(transaction=True)
def test_run_now_reports_a_failed_run_as_an_error(admin_client, settings):
    # A backend that finishes the run before the page is sent (one that ignores
    # run_after_response) has its outcome reported.
    settings.DATAFLOWS = {"BACKEND": "tests.testapp.backends.AtOnceBackend"}
    data_flow = DataFlowFactory(name="broken", flow="tests.testapp.flows.Explode")

    response = post_action(admin_client, "run_now", data_flow)

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    [(level, text)] = shown_messages(response)
    assert level == message_levels.ERROR
    assert text.endswith(f"run {run.pk}</a> failed: boom")


@pytest.mark.django_db(transaction=True)
def test_run_now_reports_each_selected_flow(admin_client, settings):
    settings.DATAFLOWS = {"BACKEND": "tests.testapp.backends.AtOnceBackend"}
    good = DataFlowFactory(name="good")
    bad = DataFlowFactory(name="bad", flow="tests.testapp.flows.Explode")

    response = post_action(admin_client, "run_now", good, bad)

    assert sorted(level for level, _ in shown_messages(response)) == [
        message_levels.SUCCESS,
        message_levels.ERROR,
    ]
    assert DataFlowRun.objects.count() == 2


def test_inside_a_transaction_run_now_reports_queued_and_runs_on_commit(
    admin_client, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(name="orders")

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(admin_client, "run_now", data_flow)
        [(level, text)] = shown_messages(response)

    assert level == message_levels.INFO
    assert text.endswith("queued.")
    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS


def test_inside_a_transaction_a_refused_run_is_recorded_not_a_crash(
    admin_client, settings, django_capture_on_commit_callbacks
):
    # As with ATOMIC_REQUESTS: the backend refuses only when the transaction commits,
    # after the action has answered, so the refusal must end up on the run.
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    data_flow = DataFlowFactory(name="orders")

    with django_capture_on_commit_callbacks(execute=True):
        response = post_action(admin_client, "run_now", data_flow)

    assert response.status_code == 200
    [(level, text)] = shown_messages(response)
    assert (level, text.endswith("queued.")) == (message_levels.INFO, True)
    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message.startswith("Could not enqueue the run: broker unreachable")


def test_run_now_with_an_asynchronous_backend_reports_queued(admin_client, dummy_backend):
    data_flow = DataFlowFactory(name="orders")

    response = post_action(admin_client, "run_now", data_flow)

    [(level, text)] = shown_messages(response)
    assert level == message_levels.INFO
    assert "queued" in text
    assert DataFlowRun.objects.get().status == RunStatus.PENDING


def test_run_now_while_a_run_is_active_is_an_error_not_a_crash(admin_client):
    data_flow = DataFlowFactory(name="busy")
    data_flow.create_pending_run()

    response = post_action(admin_client, "run_now", data_flow)

    assert response.status_code == 200
    [(level, text)] = shown_messages(response)
    assert level == message_levels.ERROR
    assert "“busy” was not run" in text
    assert "already has a pending or in-progress run" in text
    assert DataFlowRun.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_run_now_when_the_backend_refuses_is_an_error_not_a_crash(admin_client, settings):
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    data_flow = DataFlowFactory(name="orders")

    response = post_action(admin_client, "run_now", data_flow)

    assert response.status_code == 200
    [(level, text)] = shown_messages(response)
    assert level == message_levels.ERROR
    assert "Could not enqueue" in text
    assert DataFlowRun.objects.get().status == RunStatus.FAILED


def test_enable_keeps_the_interval_since_the_last_run(admin_client):
    last_run = ago(minutes=10)
    data_flow = DataFlowFactory(enabled=False, run_interval=3600, last_run_at=last_run)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=ago(days=3))

    response = post_action(admin_client, "enable", data_flow)

    data_flow.refresh_from_db()
    assert data_flow.enabled
    assert data_flow.next_run_at == last_run + datetime.timedelta(hours=1)
    assert not DataFlow.objects.due_to_run().exists()
    assert shown_messages(response) == [(message_levels.SUCCESS, "1 data flow was enabled.")]


def test_disable_stops_the_schedule_and_is_logged(admin_client):
    data_flow = DataFlowFactory()
    already = DataFlowFactory(enabled=False)

    response = post_action(admin_client, "disable", data_flow, already)

    data_flow.refresh_from_db()
    assert not data_flow.enabled
    assert not DataFlow.objects.due_to_run().exists()
    assert shown_messages(response) == [(message_levels.SUCCESS, "1 data flow was disabled.")]
    assert LogEntry.objects.get().object_id == str(data_flow.pk)


# -- permissions ------------------------------------------------------------------------


def test_a_view_only_user_sees_the_pages_but_no_actions(viewer_client, admin_client):
    data_flow = DataFlowFactory()
    run = DataFlowRunFactory(data_flow=data_flow)

    viewer = viewer_client.get(FLOWS)
    admin = admin_client.get(FLOWS)

    assert viewer.status_code == 200
    for action in ("run_now", "enable", "disable"):
        assert f'<option value="{action}">' in admin.content.decode()
        assert f'value="{action}"' not in viewer.content.decode()
    assert viewer_client.get(flow_url(data_flow)).status_code == 200
    assert viewer_client.get(run_url(run)).status_code == 200


@pytest.mark.parametrize("action", ["run_now", "enable", "disable"])
@pytest.mark.parametrize(
    "codenames",
    [
        ("view_dataflow", "view_dataflowrun"),
        # Delete permission turns the action machinery on (delete_selected is offered).
        ("view_dataflow", "delete_dataflow"),
    ],
)
def test_without_change_permission_posting_an_action_does_nothing(client, codenames, action):
    user_client = staff_client(client, *codenames)
    data_flow = DataFlowFactory(enabled=action != "enable")

    response = post_action(user_client, action, data_flow)

    assert response.status_code == 200
    assert not DataFlowRun.objects.exists()
    assert DataFlow.objects.get().enabled == (action != "enable")
    assert not LogEntry.objects.exists()


def test_a_view_only_user_cannot_change_or_add_a_flow(viewer_client):
    data_flow = DataFlowFactory(name="orders")

    changed = viewer_client.post(flow_url(data_flow), valid_form(name="renamed"))
    added = viewer_client.post(ADD_FLOW, valid_form(name="new"))

    assert (changed.status_code, added.status_code) == (403, 403)
    assert list(DataFlow.objects.values_list("name", flat=True)) == ["orders"]


def test_a_user_with_change_and_run_permissions_gets_the_actions(client):
    editor = staff_client(client, "view_dataflow", "change_dataflow", "run_dataflow")
    data_flow = DataFlowFactory(enabled=False)

    post_action(editor, "enable", data_flow)

    data_flow.refresh_from_db()
    assert data_flow.enabled


def test_deleting_a_flow_with_history_needs_a_superuser(client, admin_client):
    # Deleting a flow deletes its runs, and only superusers may delete runs.
    staff = staff_client(client, "view_dataflow", "delete_dataflow")
    unused = DataFlowFactory()
    used = DataFlowFactory()
    DataFlowRunFactory(data_flow=used)

    def delete(as_client, data_flow):
        url = reverse("admin:dataflows_dataflow_delete", args=[data_flow.pk])
        return as_client.post(url, {"post": "yes"})

    assert delete(staff, unused).status_code == 302
    assert delete(staff, used).status_code == 403
    assert delete(admin_client, used).status_code == 302
    assert not DataFlow.objects.exists()


# -- the run history --------------------------------------------------------------------


def test_the_run_list_shows_each_run(admin_client, admin_user):
    data_flow = DataFlowFactory(name="orders")
    started = ago(minutes=5)
    DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.TIMED_OUT,
        triggered_by=admin_user,
        started_at=started,
        ended_at=started + datetime.timedelta(seconds=12.3),
        attempt=2,
    )

    response = admin_client.get(RUNS)

    assert response.status_code == 200
    html = response.content.decode()
    assert f'<a href="{flow_url(data_flow)}">orders</a>' in html
    assert '<span class="dataflows-badge dataflows-badge--timed_out">Timed out</span>' in html
    assert "12.3 s" in html
    assert admin_user.username in html


def test_the_run_list_filters_by_status_and_trigger(admin_client):
    DataFlowRunFactory(status=RunStatus.SUCCESS, trigger=RunTrigger.SCHEDULE)
    failed = DataFlowRunFactory(status=RunStatus.FAILED, trigger=RunTrigger.SCHEDULE)
    DataFlowRunFactory(status=RunStatus.FAILED, trigger=RunTrigger.MANUAL)

    response = admin_client.get(
        RUNS, {"status__exact": RunStatus.FAILED, "trigger__exact": RunTrigger.SCHEDULE}
    )

    assert list(response.context["cl"].result_list) == [failed]


def test_the_run_page_shows_error_backtrace_result_and_the_flow(admin_client):
    data_flow = DataFlowFactory(name="orders")
    run = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.FAILED,
        error_message="boom",
        error_backtrace="Traceback (most recent call last):\n  <frame>\nValueError: boom",
        result={"copied": 3, "tags": ["a"]},
    )

    response = admin_client.get(run_url(run))

    assert response.status_code == 200
    html = response.content.decode()
    assert (
        '<pre class="dataflows-pre">Traceback (most recent call last):\n'
        "  &lt;frame&gt;\nValueError: boom</pre>"
    ) in html
    assert '<pre class="dataflows-pre">{\n  &quot;copied&quot;: 3,' in html
    assert f'<a href="{flow_url(data_flow)}">orders</a>' in html
    assert 'name="_save"' not in html


def test_the_run_page_hides_the_backtrace_without_the_view_permission(client):
    # Django lets "change" stand in for "view"; the backtrace needs the view permission.
    changer = staff_client(client, "change_dataflowrun")
    run = DataFlowRunFactory(status=RunStatus.FAILED, error_backtrace="ValueError: secret")

    response = changer.get(run_url(run))

    assert response.status_code == 200
    assert "secret" not in response.content.decode()


def test_runs_cannot_be_added_or_changed_even_by_a_superuser(admin_client):
    run = DataFlowRunFactory(status=RunStatus.SUCCESS, attempt=1)

    add = admin_client.get(reverse("admin:dataflows_dataflowrun_add"))
    change = admin_client.post(run_url(run), {"status": RunStatus.FAILED, "attempt": "5"})

    assert (add.status_code, change.status_code) == (403, 403)
    run.refresh_from_db()
    assert (run.status, run.attempt) == (RunStatus.SUCCESS, 1)


def test_only_superusers_may_delete_runs(client, admin_client):
    run = DataFlowRunFactory()
    delete_url = reverse("admin:dataflows_dataflowrun_delete", args=[run.pk])
    staff = staff_client(client, "view_dataflowrun", "delete_dataflowrun")

    assert staff.post(delete_url, {"post": "yes"}).status_code == 403
    assert DataFlowRun.objects.exists()
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert not DataFlowRun.objects.exists()


# -- health at a glance -----------------------------------------------------------------


def record_heartbeat(received_at):
    Heartbeat.record(
        received_at=received_at,
        source="http",
        client="127.0.0.1",
        result={"flows_triggered": 2, "flows_failed": 1},
    )


def test_without_any_heartbeat_the_health_box_says_never_and_warns(admin_client):
    DataFlowFactory()

    html = admin_client.get(FLOWS).content.decode()

    assert re.search(r'id="dataflows-heartbeat">\s*never', html)
    assert "No heartbeat has ever arrived" in html


def test_without_enabled_flows_a_missing_heartbeat_is_no_warning(admin_client):
    DataFlowFactory(enabled=False)

    html = admin_client.get(FLOWS).content.decode()

    assert re.search(r'id="dataflows-heartbeat">\s*never', html)
    assert 'role="alert"' not in html


def test_a_recent_heartbeat_is_shown_without_a_warning(admin_client):
    DataFlowFactory(run_interval=60)
    record_heartbeat(ago(minutes=2))

    html = admin_client.get(FLOWS).content.decode()

    assert "2\xa0minutes ago" in html
    assert "http from 127.0.0.1" in html
    assert "triggered 2, failed 1" in html
    assert 'role="alert"' not in html


@pytest.mark.parametrize(
    ("shortest_interval", "heartbeat_age", "stale"),
    [
        (60, datetime.timedelta(minutes=4), False),  # limit: the 5-minute floor
        (60, datetime.timedelta(minutes=6), True),
        (600, datetime.timedelta(minutes=25), False),  # limit: 3 x 10 minutes
        (600, datetime.timedelta(minutes=35), True),
    ],
)
def test_an_old_heartbeat_warns_that_cron_has_stopped(
    admin_client, shortest_interval, heartbeat_age, stale
):
    DataFlowFactory(run_interval=shortest_interval)
    DataFlowFactory(run_interval=86400)
    DataFlowFactory(run_interval=1, enabled=False)  # disabled flows do not count
    record_heartbeat(timezone.now() - heartbeat_age)

    html = admin_client.get(FLOWS).content.decode()

    assert ("The heartbeat has stopped" in html) is stale


def test_the_health_box_counts_stuck_runs(admin_client, settings):
    settings.DATAFLOWS = {"RUN_TIMEOUT": 3600}

    def active_run(status, *, timeout=None, started=None, created=None):
        DataFlowRunFactory(
            data_flow=DataFlowFactory(timeout=timeout),
            status=status,
            started_at=started,
            created_at=created or timezone.now(),
        )

    active_run(RunStatus.IN_PROGRESS, started=ago(hours=2))  # stuck: past RUN_TIMEOUT
    active_run(RunStatus.IN_PROGRESS, started=ago(minutes=10))  # fine
    active_run(RunStatus.IN_PROGRESS, timeout=60, started=ago(minutes=2))  # stuck: own timeout
    active_run(RunStatus.PENDING, created=ago(hours=2))  # stuck: never picked up
    DataFlowRunFactory(status=RunStatus.FAILED, started_at=ago(hours=5))  # finished

    response = admin_client.get(FLOWS)

    assert health_count(response, "dataflows-stuck-runs") == 3
    assert f"{RUNS}?status__in=pending%2Cin_progress" in response.content.decode()


def test_the_health_box_counts_failures_of_the_last_day(admin_client):
    DataFlowRunFactory(status=RunStatus.FAILED, ended_at=ago(hours=1))
    DataFlowRunFactory(status=RunStatus.TIMED_OUT, ended_at=ago(hours=23))
    DataFlowRunFactory(status=RunStatus.FAILED, ended_at=ago(hours=25))
    DataFlowRunFactory(status=RunStatus.SUCCESS, ended_at=ago(hours=1))

    response = admin_client.get(FLOWS)

    assert health_count(response, "dataflows-recent-failures") == 2
    link = re.search(r'href="([^"]+)">see them', response.content.decode()).group(1)
    listed = admin_client.get(link.replace("&amp;", "&"))
    assert len(listed.context["cl"].result_list) == 2


def test_the_health_box_hides_run_links_from_users_who_cannot_see_runs(client):
    DataFlowRunFactory(status=RunStatus.FAILED, ended_at=ago(hours=1))
    flows_only = staff_client(client, "view_dataflow")

    response = flows_only.get(FLOWS)

    assert health_count(response, "dataflows-recent-failures") == 1
    assert RUNS not in response.content.decode()


# -- query counts -----------------------------------------------------------------------


def build_history(flow_count, runs_per_flow):
    """``flow_count`` flows, each with ``runs_per_flow`` finished runs and a user."""
    user = UserFactory()
    flows = DataFlowFactory.create_batch(flow_count)
    statuses = (RunStatus.SUCCESS, RunStatus.FAILED)
    DataFlowRun.objects.bulk_create(
        DataFlowRun(
            data_flow=data_flow,
            status=statuses[i % 2],
            trigger=RunTrigger.MANUAL,
            triggered_by=user,
            created_at=ago(hours=i),
            started_at=ago(hours=i),
            ended_at=ago(hours=i),
        )
        for data_flow in flows
        for i in range(runs_per_flow)
    )


def count_queries(client, url):
    client.get(url)  # warm caches (content types, session) first
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


@pytest.mark.parametrize("url", [FLOWS, RUNS])
def test_the_lists_make_as_many_queries_for_many_rows_as_for_few(admin_client, url):
    build_history(5, 2)
    few = count_queries(admin_client, url)

    DataFlow.objects.all().delete()
    build_history(50, 20)
    many = count_queries(admin_client, url)

    assert DataFlowRun.objects.count() == 50 * 20
    assert many == few, f"{few} queries for 5 flows x 2 runs, {many} for 50 x 20"


# -- schedules: cron, the schedule-kind switch, the next slots, the overdue badge ----------


def cron_form(**overrides):
    cron = {
        "schedule_kind": "cron",
        "run_interval": "",
        "cron": "30 2 * * 1-5",
        "timezone": "Europe/Berlin",
    }
    return valid_form(**{**cron, **overrides})


def test_adding_a_cron_flow_saves_it(admin_client):
    response = admin_client.post(ADD_FLOW, cron_form(alert_after="3600"))

    assert response.status_code == 302
    data_flow = DataFlow.objects.get()
    assert (data_flow.cron, data_flow.timezone, data_flow.run_interval) == (
        "30 2 * * 1-5",
        "Europe/Berlin",
        None,
    )
    assert data_flow.alert_after == 3600


def test_the_schedule_kind_switch_clears_the_other_kinds_field(admin_client):
    admin_client.post(ADD_FLOW, cron_form(run_interval="-5"))
    admin_client.post(ADD_FLOW, valid_form(name="interval", schedule_kind="interval", cron="oops"))

    assert list(DataFlow.objects.order_by("name").values_list("name", "cron", "run_interval")) == [
        ("interval", "", 300),
        ("orders", "30 2 * * 1-5", None),
    ]


def test_the_switch_starts_on_the_flows_kind(admin_client):
    data_flow = DataFlowFactory(run_interval=None, cron="0 6 * * *")

    html = admin_client.get(flow_url(data_flow)).content.decode()

    assert re.search(r'value="cron"[^>]*checked', html)


@pytest.mark.parametrize(
    ("data", "field", "error"),
    [
        ({"cron": "61 * * * *"}, "cron", "bad minute"),
        ({"cron": "@reboot"}, "cron", "@reboot is not supported"),
        ({"schedule_kind": "", "run_interval": "60"}, "cron", "not both"),
        ({"timezone": "Mars/Olympus"}, "timezone", "is not a known time zone"),
        ({"alert_after": "0"}, "alert_after", "greater than or equal to 1"),
        ({"alert_after": "-1"}, "alert_after", "greater than or equal to"),
        ({"alert_emails": "ops@example.com nope@"}, "alert_emails", "'nope@' is not a valid"),
    ],
)
def test_bad_schedule_input_is_a_field_error_on_the_form(admin_client, data, field, error):
    response = admin_client.post(ADD_FLOW, cron_form(**data))

    assert response.status_code == 200
    assert error in " ".join(form_errors(response)[field])
    assert not DataFlow.objects.exists()


def test_without_the_switch_both_schedules_is_a_field_error(admin_client):
    data = cron_form()
    del data["schedule_kind"]
    data["run_interval"] = "60"

    response = admin_client.post(ADD_FLOW, data)

    assert "not both" in " ".join(form_errors(response)["cron"])
    assert not DataFlow.objects.exists()


def test_the_change_page_says_the_schedule_in_words_and_the_next_slots_in_both_zones(
    admin_client,
):
    data_flow = DataFlowFactory(run_interval=None, cron="30 2 * * 1-5", timezone="Europe/Berlin")

    response = admin_client.get(flow_url(data_flow))

    html = response.content.decode()
    assert "At 02:30 on Monday through Friday (Europe/Berlin)" in html
    upcoming = response.context["upcoming_runs"]
    assert len(upcoming) == 5
    moment, _relative, local, utc = upcoming[0]
    assert local.endswith("(Europe/Berlin)")
    assert " 02:30 " in local
    assert utc == f"{moment:%Y-%m-%d %H:%M} UTC"
    assert local in html
    assert utc in html


def test_a_stored_invalid_cron_is_shown_not_crashed_on(admin_client):
    data_flow = DataFlowFactory(run_interval=None, cron="0 6 * * *")
    DataFlow.objects.filter(pk=data_flow.pk).update(cron="61 * * * *")

    change = admin_client.get(flow_url(data_flow)).content.decode()
    listing = admin_client.get(FLOWS).content.decode()

    assert "The stored schedule is invalid, so the heartbeat skips this data flow" in change
    assert "invalid schedule" in listing


def test_an_overdue_flow_has_a_red_badge_in_the_list(admin_client):
    late = DataFlowFactory(name="late", alert_after=60)
    DataFlow.objects.filter(pk=late.pk).update(created_at=ago(minutes=5))
    DataFlowFactory(name="fine", alert_after=3600)

    html = admin_client.get(FLOWS).content.decode()

    assert html.count("dataflows-badge--overdue") == 1
    assert "overdue since" in html
