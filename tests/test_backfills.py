"""Backfills: past slots run once each, oldest first, one at a time; bad input refused."""

from __future__ import annotations

import datetime
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.backfills import next_backfill_runs
from django_dataflows.models import (
    AuditAction,
    AuditEntry,
    Backfill,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
)
from django_dataflows.scheduling import run_heartbeat, start_ready_downstream
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)
TODAY = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
WEEK_AGO = TODAY - 7 * DAY


def daily(**fields) -> DataFlow:
    """A flow that runs at 03:00 UTC every day."""
    return DataFlowFactory(
        name="daily", cron="0 3 * * *", timezone="UTC", run_interval=None, **fields
    )


def slots(days: int) -> list[datetime.datetime]:
    return [WEEK_AGO + datetime.timedelta(hours=3) + i * DAY for i in range(days)]


@pytest.fixture
def without_receiver():
    """The heartbeat alone drives backfills (as when runs end in a process that died)."""
    signals.run_finished.disconnect(sender=DataFlow, dispatch_uid="dataflows.pipelines")
    yield
    signals.run_finished.connect(
        start_ready_downstream, sender=DataFlow, dispatch_uid="dataflows.pipelines"
    )


def test_a_backfill_runs_every_slot_once_oldest_first():
    flow = daily(flow="tests.testapp.flows.ReportsPipeline")

    backfill = flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()

    backfill.refresh_from_db()
    assert (backfill.status, backfill.done, backfill.total) == ("done", 7, 7)
    runs = list(flow.runs.order_by("pk"))
    assert [run.scheduled_for for run in runs] == slots(7)
    assert {(run.trigger, run.status, run.backfill_id) for run in runs} == {
        (RunTrigger.BACKFILL, RunStatus.SUCCESS, backfill.pk)
    }
    assert runs[1].result["slot"] == slots(7)[1].isoformat()
    assert runs[1].result["previous_slot"] == slots(7)[0].isoformat()


def test_the_heartbeat_alone_runs_one_slot_at_a_time(without_receiver):
    flow = daily()
    backfill = flow.backfill(WEEK_AGO, TODAY)

    for day in range(7):
        assert run_heartbeat().flows_triggered == 1
        assert flow.runs.count() == day + 1
    run_heartbeat()

    backfill.refresh_from_db()
    assert backfill.status == "done"


def test_slots_that_already_succeeded_are_skipped():
    flow = daily()
    kept = DataFlowRunFactory(data_flow=flow, scheduled_for=slots(7)[2], trigger="schedule")
    DataFlowRunFactory(
        data_flow=flow, scheduled_for=slots(7)[3], status=RunStatus.FAILED, trigger="schedule"
    )

    backfill = flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()

    backfilled = flow.runs.filter(backfill=backfill).order_by("scheduled_for")
    assert [run.scheduled_for for run in backfilled] == slots(7)[:2] + slots(7)[3:]
    assert flow.runs.filter(scheduled_for=slots(7)[2]).get() == kept


def test_rerun_runs_succeeded_slots_again_and_keeps_the_old_runs():
    flow = daily()
    old = DataFlowRunFactory(data_flow=flow, scheduled_for=slots(7)[0], trigger="schedule")

    flow.backfill(WEEK_AGO, TODAY, rerun=True)
    run_heartbeat()

    assert list(flow.runs.filter(scheduled_for=slots(7)[0]).order_by("pk")) == [
        old,
        flow.runs.get(scheduled_for=slots(7)[0], trigger=RunTrigger.BACKFILL),
    ]
    assert flow.runs.filter(trigger=RunTrigger.BACKFILL).count() == 7


def test_a_second_backfill_over_a_finished_one_skips_its_slots():
    flow = daily()
    flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()

    again = flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()

    again.refresh_from_db()
    assert (again.status, again.done, again.runs.count()) == ("done", 7, 0)


def test_cancel_stops_after_the_current_run(without_receiver, dummy_backend):
    flow = daily()
    backfill = flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()
    current = flow.runs.get()

    assert backfill.cancel()
    DataFlowRun.objects.filter(pk=current.pk).update(status=RunStatus.SUCCESS)
    run_heartbeat()

    backfill.refresh_from_db()
    assert (backfill.status, flow.runs.count()) == ("cancelled", 1)
    assert not backfill.cancel()


def test_one_slot_runs_once_per_backfill_in_the_database():
    flow = daily()
    backfill = flow.backfill(WEEK_AGO, TODAY)
    DataFlowRunFactory(data_flow=flow, backfill=backfill, scheduled_for=slots(1)[0])

    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowRunFactory(data_flow=flow, backfill=backfill, scheduled_for=slots(1)[0])


def test_a_busy_flow_gets_its_next_slot_when_free(without_receiver):
    flow = daily()
    busy = DataFlowRunFactory(data_flow=flow, status=RunStatus.IN_PROGRESS)
    flow.backfill(WEEK_AGO, TODAY)

    with transaction.atomic():
        assert next_backfill_runs(timezone.now()) == []
    DataFlowRun.objects.filter(pk=busy.pk).update(status=RunStatus.SUCCESS)
    with transaction.atomic():
        assert len(next_backfill_runs(timezone.now())) == 1


def test_an_interval_flow_is_backfilled_on_its_grid():
    flow = DataFlowFactory(name="hourly", run_interval=3600)
    anchor = flow.next_run_at

    backfill = flow.backfill(anchor - 3 * datetime.timedelta(hours=1), anchor)
    run_heartbeat()  # the flow's own slot first: the backfill waits for the next heartbeat
    run_heartbeat()

    backfill.refresh_from_db()
    assert backfill.total == 3
    assert sorted(flow.runs.filter(backfill=backfill).values_list("scheduled_for", flat=True)) == [
        anchor - n * datetime.timedelta(hours=1) for n in (3, 2, 1)
    ]


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "start", "end", "message"),
    [
        (daily, TODAY, TODAY, "must be after the start"),
        (daily, TODAY, WEEK_AGO, "must be after the start"),
        (
            lambda: DataFlowFactory(name="x", run_interval=None),
            WEEK_AGO,
            TODAY,
            "has no schedule",
        ),
        (
            lambda: DataFlowFactory(name="x", run_interval=60),
            TODAY - 30 * DAY,
            TODAY,
            "more than 10,000 slots",
        ),
        (
            lambda: DataFlowFactory(name="x", cron="0 3 1 1 *", run_interval=None),
            WEEK_AGO,
            WEEK_AGO + DAY,
            "No slot",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_problem_and_writes_nothing(make, start, end, message):
    flow = make()

    with pytest.raises(ValidationError, match=message):
        flow.backfill(start, end)

    assert not Backfill.objects.exists()


def test_a_backfill_overlapping_a_running_one_is_refused():
    flow = daily()
    first = flow.backfill(WEEK_AGO, TODAY)

    with pytest.raises(ValidationError, match=f"Backfill {first.pk} of 'daily'"):
        flow.backfill(TODAY - 2 * DAY, TODAY + DAY)

    assert Backfill.objects.count() == 1


def test_force_allows_more_than_ten_thousand_slots(dummy_backend):
    flow = DataFlowFactory(name="x", run_interval=60)

    backfill = flow.backfill(TODAY - 30 * DAY, TODAY, force=True)

    assert backfill.total == 30 * 24 * 60


# -- command ----------------------------------------------------------------------------------


def test_the_command_backfills_with_progress():
    daily()
    out = StringIO()

    call_command(
        "dataflows_backfill",
        "daily",
        "--from",
        WEEK_AGO.date().isoformat(),
        "--to",
        TODAY.isoformat(),
        stdout=out,
    )

    text = out.getvalue()
    assert "7 slots in" in text
    assert "1/7 slots (14%)" in text
    assert "7/7 slots (100%)" in text
    assert "done: 7/7 slots." in text


def test_the_command_refuses_bad_input_with_the_reason():
    daily()

    with pytest.raises(CommandError, match="must be after the start"):
        call_command("dataflows_backfill", "daily", "--from", "2026-01-02", "--to", "2026-01-01")
    with pytest.raises(CommandError, match="No data flow named 'nope'"):
        call_command("dataflows_backfill", "nope", "--from", "2026-01-01", "--to", "2026-01-02")


def test_the_command_exits_1_when_a_slot_failed():
    daily(flow="tests.testapp.flows.Explode")

    with pytest.raises(CommandError, match="7 runs not successful") as raised:
        call_command(
            "dataflows_backfill",
            "daily",
            "--from",
            WEEK_AGO.isoformat(),
            "--to",
            TODAY.isoformat(),
            stdout=StringIO(),
        )

    assert raised.value.returncode == 1


def test_the_command_acts_as_a_user_who_may_run_the_flow_and_is_recorded():
    from django.contrib.auth.models import Permission

    owner = UserFactory(username="olga")
    for codename in ("view_dataflow", "run_dataflow"):
        owner.user_permissions.add(Permission.objects.get(codename=codename))
    viewer = UserFactory(username="vic")
    viewer.user_permissions.add(Permission.objects.get(codename="view_dataflow"))
    daily()
    arguments = ["daily", "--from", WEEK_AGO.isoformat(), "--to", TODAY.isoformat(), "--no-wait"]

    with pytest.raises(CommandError, match="'vic' may not run 'daily'"):
        call_command("dataflows_backfill", *arguments, "--as-user", "vic", stdout=StringIO())
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("dataflows_backfill", *arguments, "--as-user", "nobody", stdout=StringIO())
    assert not Backfill.objects.exists()
    assert not AuditEntry.objects.exists()

    call_command("dataflows_backfill", *arguments, "--as-user", "olga", stdout=StringIO())

    backfill = Backfill.objects.get()
    assert backfill.created_by == owner
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source, entry.actor) == (
        AuditAction.BACKFILL_STARTED,
        "command",
        owner,
    )


def test_the_command_does_not_find_a_flow_the_user_may_not_see():
    UserFactory(username="stranger")
    daily()

    with pytest.raises(CommandError, match="No data flow named 'daily'"):
        call_command(
            "dataflows_backfill",
            "daily",
            "--from",
            WEEK_AGO.isoformat(),
            "--to",
            TODAY.isoformat(),
            "--as-user",
            "stranger",
            stdout=StringIO(),
        )


def test_the_command_can_leave_the_slots_to_the_heartbeat():
    daily()

    call_command(
        "dataflows_backfill",
        "daily",
        "--from",
        WEEK_AGO.isoformat(),
        "--to",
        TODAY.isoformat(),
        "--no-wait",
        stdout=StringIO(),
    )

    assert Backfill.objects.get().status == "running"
    assert not DataFlowRun.objects.exists()


# -- API ------------------------------------------------------------------------------------


def api_client(**user_fields):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(UserFactory(is_staff=True, is_superuser=True, **user_fields))
    return api


def test_the_api_starts_lists_and_cancels_backfills(without_receiver, dummy_backend):
    flow = daily()
    api = api_client()

    created = api.post(
        f"/dataflows/api/flows/{flow.pk}/backfill/",
        {"start": WEEK_AGO.isoformat(), "end": TODAY.isoformat()},
        format="json",
    )
    listed = api.get("/dataflows/api/backfills/")
    cancelled = api.post(f"/dataflows/api/backfills/{created.json()['id']}/cancel/")
    again = api.post(f"/dataflows/api/backfills/{created.json()['id']}/cancel/")

    assert created.status_code == 202
    assert {key: created.json()[key] for key in ("flow_name", "status", "done", "total")} == {
        "flow_name": "daily",
        "status": "running",
        "done": 0,
        "total": 7,
    }
    assert [item["id"] for item in listed.json()["results"]] == [created.json()["id"]]
    assert (cancelled.status_code, cancelled.json()["status"]) == (202, "cancelled")
    assert again.status_code == 409
    entries = AuditEntry.objects.order_by("pk")
    assert [(e.action, e.source, e.flow_name) for e in entries] == [
        (AuditAction.BACKFILL_STARTED, "api", "daily"),
        (AuditAction.BACKFILL_CANCELLED, "api", "daily"),
    ]
    assert entries[0].details["slots"] == 7
    assert entries[0].details["backfill_id"] == created.json()["id"]


def test_the_api_refuses_a_bad_backfill_with_400():
    flow = daily()

    response = api_client().post(
        f"/dataflows/api/flows/{flow.pk}/backfill/",
        {"start": TODAY.isoformat(), "end": WEEK_AGO.isoformat()},
        format="json",
    )

    assert response.status_code == 400
    assert "must be after the start" in str(response.json())
    assert not Backfill.objects.exists()
    assert not AuditEntry.objects.exists()


def test_the_api_needs_the_run_permission_to_backfill():
    from django.contrib.auth.models import Permission

    flow = daily()
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_dataflow"))
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(user)

    response = api.post(
        f"/dataflows/api/flows/{flow.pk}/backfill/",
        {"start": WEEK_AGO.isoformat(), "end": TODAY.isoformat()},
        format="json",
    )

    assert response.status_code == 403


# -- admin ----------------------------------------------------------------------------------


def test_the_admin_action_opens_the_backfill_form_for_the_flow(admin_client):
    flow = daily()

    response = admin_client.post(
        "/admin/dataflows/dataflow/",
        {"action": "backfill", "_selected_action": [flow.pk]},
    )

    assert response.status_code == 302
    assert response["Location"] == f"/admin/dataflows/backfill/add/?data_flow={flow.pk}"


def test_the_admin_form_creates_a_backfill_and_lists_its_progress(admin_client, dummy_backend):
    flow = daily()

    response = admin_client.post(
        "/admin/dataflows/backfill/add/",
        {
            "data_flow": flow.pk,
            "start_0": WEEK_AGO.date().isoformat(),
            "start_1": "00:00:00",
            "end_0": TODAY.date().isoformat(),
            "end_1": "00:00:00",
        },
    )

    assert response.status_code == 302, response.content.decode()
    backfill = Backfill.objects.get()
    assert backfill.total == 7
    page = admin_client.get("/admin/dataflows/backfill/").content.decode()
    assert '<progress max="7" value="0">' in page
    assert "0 of 7 slots" in page
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source, entry.actor.username) == (
        AuditAction.BACKFILL_STARTED,
        "admin",
        "admin",
    )

    admin_client.post(
        "/admin/dataflows/backfill/",
        {"action": "cancel_backfills", "_selected_action": [backfill.pk]},
    )

    backfill.refresh_from_db()
    assert backfill.status == "cancelled"
    assert AuditEntry.objects.latest("pk").action == AuditAction.BACKFILL_CANCELLED


def test_the_admin_form_shows_why_a_backfill_is_refused(admin_client):
    flow = DataFlowFactory(name="x", run_interval=None)

    response = admin_client.post(
        "/admin/dataflows/backfill/add/",
        {
            "data_flow": flow.pk,
            "start_0": WEEK_AGO.date().isoformat(),
            "start_1": "00:00:00",
            "end_0": TODAY.date().isoformat(),
            "end_1": "00:00:00",
        },
    )

    assert response.status_code == 200
    assert "has no schedule" in response.content.decode()
    assert not Backfill.objects.exists()


def test_the_run_page_says_what_started_the_run(admin_client):
    flow = daily()
    backfill = flow.backfill(WEEK_AGO, TODAY)
    run_heartbeat()
    run = flow.runs.order_by("pk").first()

    page = admin_client.get(f"/admin/dataflows/dataflowrun/{run.pk}/change/").content.decode()

    assert (
        f'<a href="/admin/dataflows/backfill/{backfill.pk}/change/">backfill {backfill.pk}</a>'
        in page
    )
    assert f'<time datetime="{slots(1)[0].isoformat()}">' in page


def test_even_forced_a_backfill_has_at_most_a_hundred_thousand_slots():
    flow = DataFlowFactory(name="x", run_interval=1)

    with pytest.raises(ValidationError, match="too many even forced"):
        flow.backfill(TODAY - 30 * DAY, TODAY, force=True)

    assert not Backfill.objects.exists()


def test_a_range_at_the_end_of_the_calendar_is_refused():
    flow = DataFlowFactory(name="x", cron="0 0 1 1 *", timezone="UTC", run_interval=None)

    with pytest.raises(ValidationError, match=r"out of bounds|cannot be evaluated"):
        flow.backfill(
            datetime.datetime(9999, 6, 1, tzinfo=UTC),
            datetime.datetime(9999, 12, 31, 23, tzinfo=UTC),
        )
    assert not Backfill.objects.exists()
