"""The dead man's switch (overdue flows) and the e-mail alerts, through Django's locmem backend."""

from __future__ import annotations

import datetime

import django
import pytest
from django.db.models.functions import Now
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, RunStatus
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db

EXPLODE = "tests.testapp.flows.Explode"


def created_ago(data_flow, **delta):
    created = timezone.now() - datetime.timedelta(**delta)
    DataFlow.objects.filter(pk=data_flow.pk).update(created_at=created)
    data_flow.refresh_from_db()
    return created


def not_due(data_flow):
    """Keep the heartbeat from running the flow: these tests are about its past runs."""
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=Now() + datetime.timedelta(days=1))


@pytest.fixture
def overdue_signals():
    received = []

    def receiver(sender, data_flow, since, **kwargs):
        received.append((data_flow.name, since))

    signals.flow_overdue.connect(receiver)
    yield received
    signals.flow_overdue.disconnect(receiver)


# -- overdue ------------------------------------------------------------------------------


def test_a_flow_that_never_succeeded_is_overdue_alert_after_its_creation():
    late = DataFlowFactory(name="late", alert_after=60)
    created = created_ago(late, minutes=5)
    DataFlowFactory(name="young", alert_after=3600)

    overdue = list(DataFlow.objects.overdue())

    assert [flow.name for flow in overdue] == ["late"]
    assert overdue[0].overdue_since == created + datetime.timedelta(seconds=60)
    assert late.is_overdue


def test_overdue_counts_from_the_last_successful_run():
    data_flow = DataFlowFactory(alert_after=600)
    created_ago(data_flow, days=1)
    ended = timezone.now() - datetime.timedelta(minutes=5)
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.SUCCESS, ended_at=ended)
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.FAILED, ended_at=timezone.now())

    assert not data_flow.is_overdue
    assert data_flow.compute_overdue_since() == ended + datetime.timedelta(seconds=600)
    assert not DataFlow.objects.overdue().exists()


def test_disabled_flows_and_flows_without_alert_after_are_never_overdue():
    disabled = DataFlowFactory(alert_after=60, enabled=False)
    created_ago(disabled, days=1)
    unwatched = DataFlowFactory()
    created_ago(unwatched, days=1)

    assert not DataFlow.objects.overdue().exists()
    assert not disabled.is_overdue
    assert not unwatched.is_overdue


def test_the_heartbeat_reports_overdue_flows_and_signals_once_per_episode(overdue_signals):
    data_flow = DataFlowFactory(name="late", alert_after=60)
    created = created_ago(data_flow, minutes=5)
    not_due(data_flow)

    first, second = run_heartbeat(source="test"), run_heartbeat(source="test")

    assert (first.flows_overdue, second.flows_overdue) == (1, 1)
    assert overdue_signals == [("late", created + datetime.timedelta(seconds=60))]


def test_a_success_ends_the_episode_and_a_later_one_is_signalled_again(overdue_signals):
    data_flow = DataFlowFactory(name="late", alert_after=60)
    created_ago(data_flow, minutes=5)
    not_due(data_flow)
    run_heartbeat(source="test")

    FlowExecutor.execute(data_flow)  # succeeds: the episode ends
    assert run_heartbeat(source="test").flows_overdue == 0
    DataFlow.objects.filter(pk=data_flow.pk).update(alert_after=1)
    data_flow.runs.update(ended_at=timezone.now() - datetime.timedelta(minutes=1))

    assert run_heartbeat(source="test").flows_overdue == 1
    assert [name for name, _ in overdue_signals] == ["late", "late"]


# -- e-mails --------------------------------------------------------------------------------


def fail(data_flow, capture):
    with capture(execute=True), pytest.raises(ValueError, match="boom"):
        FlowExecutor.execute(data_flow)


def succeed(data_flow, capture):
    data_flow.flow = "tests.testapp.flows.CountRows"
    data_flow.save(update_fields=["flow"])
    with capture(execute=True):
        FlowExecutor.execute(data_flow)


def test_a_failed_run_mails_the_flows_recipients_once_per_episode(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(
        name="orders", flow=EXPLODE, alert_emails="ops@example.com,\n dev@example.com"
    )

    fail(data_flow, django_capture_on_commit_callbacks)
    fail(data_flow, django_capture_on_commit_callbacks)
    fail(data_flow, django_capture_on_commit_callbacks)

    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    run = data_flow.runs.order_by("pk").first()
    assert message.to == ["ops@example.com", "dev@example.com"]
    assert message.subject == f"[dataflows] orders: run {run.pk} failed"
    assert f"Run {run.pk} of data flow 'orders' failed." in message.body
    assert "Error: boom" in message.body
    assert "once per failure episode" in message.body
    data_flow.refresh_from_db()
    assert data_flow.consecutive_failures == 3


def test_a_success_after_failures_sends_one_recovery_message(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(name="orders", flow=EXPLODE, alert_emails="ops@example.com")
    fail(data_flow, django_capture_on_commit_callbacks)
    fail(data_flow, django_capture_on_commit_callbacks)

    succeed(data_flow, django_capture_on_commit_callbacks)
    succeed(data_flow, django_capture_on_commit_callbacks)

    assert [message.subject for message in mailoutbox] == [
        mailoutbox[0].subject,
        "[dataflows] orders recovered",
    ]
    assert "It ends a run of 2 consecutive failed runs." in mailoutbox[1].body
    data_flow.refresh_from_db()
    assert data_flow.consecutive_failures == 0


def test_the_project_wide_list_is_used_when_the_flow_has_none(
    settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.DATAFLOWS = {"ALERT_EMAILS": ["oncall@example.com"]}
    data_flow = DataFlowFactory(flow=EXPLODE)

    fail(data_flow, django_capture_on_commit_callbacks)

    assert [message.to for message in mailoutbox] == [["oncall@example.com"]]


def test_no_recipients_no_mail_but_the_episode_is_still_counted(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(flow=EXPLODE)

    fail(data_flow, django_capture_on_commit_callbacks)

    assert mailoutbox == []
    data_flow.refresh_from_db()
    assert data_flow.consecutive_failures == 1


def test_disable_after_failures_disables_the_flow_and_the_alert_says_so(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(
        name="orders", flow=EXPLODE, alert_emails="ops@example.com", disable_after_failures=2
    )

    fail(data_flow, django_capture_on_commit_callbacks)
    data_flow.refresh_from_db()
    assert data_flow.enabled
    fail(data_flow, django_capture_on_commit_callbacks)

    data_flow.refresh_from_db()
    assert not data_flow.enabled
    assert len(mailoutbox) == 2
    assert mailoutbox[1].subject.endswith("failed - flow disabled")
    assert "DISABLED after 2 consecutive failed runs" in mailoutbox[1].body


def test_an_overdue_flow_is_mailed_once_and_its_recovery_too(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(name="feed", alert_after=60, alert_emails="ops@example.com")
    created = created_ago(data_flow, minutes=5)
    not_due(data_flow)

    with django_capture_on_commit_callbacks(execute=True):
        run_heartbeat(source="test")
        run_heartbeat(source="test")
    succeed(data_flow, django_capture_on_commit_callbacks)

    assert [message.subject for message in mailoutbox] == [
        "[dataflows] feed is overdue",
        "[dataflows] feed recovered",
    ]
    since = timezone.localtime(created + datetime.timedelta(seconds=60))
    assert f"Overdue since: {since.isoformat(timespec='seconds')}" in mailoutbox[0].body
    assert "no successful run for 60 seconds" in mailoutbox[0].body
    assert "had been overdue since" in mailoutbox[1].body


def test_mail_waits_for_the_commit(mailoutbox, django_capture_on_commit_callbacks):
    data_flow = DataFlowFactory(flow=EXPLODE, alert_emails="ops@example.com")

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ValueError, match="boom"):
        FlowExecutor.execute(data_flow)

    assert mailoutbox == []
    for callback in callbacks:
        callback()
    assert len(mailoutbox) == 1


def test_a_mail_server_that_is_down_is_logged_not_raised(
    settings, caplog, django_capture_on_commit_callbacks
):
    smtp = "django.core.mail.backends.smtp.EmailBackend"
    if django.VERSION >= (6, 1):
        options = {"host": "127.0.0.1", "port": 9, "timeout": 2}
        settings.MAILERS = {"default": {"BACKEND": smtp, "OPTIONS": options}}
    else:
        settings.EMAIL_BACKEND = smtp
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    data_flow = DataFlowFactory(name="orders", flow=EXPLODE, alert_emails="ops@example.com")

    fail(data_flow, django_capture_on_commit_callbacks)

    assert "Could not send the alert '[dataflows] orders: run" in caplog.text


def test_a_failing_overdue_receiver_is_logged_and_the_heartbeat_goes_on(caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("pager down")

    data_flow = DataFlowFactory(name="late", alert_after=60)
    created_ago(data_flow, minutes=5)
    not_due(data_flow)
    signals.flow_overdue.connect(broken)
    try:
        result = run_heartbeat(source="test")
    finally:
        signals.flow_overdue.disconnect(broken)

    assert result.flows_overdue == 1
    assert "Receiver" in caplog.text
    assert "of flow_overdue failed" in caplog.text
    data_flow.refresh_from_db()
    assert data_flow.overdue_episode_since is not None  # announced: not sent again


# -- late runs (max_duration) -------------------------------------------------------------


def running_for(data_flow, seconds):
    return DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.IN_PROGRESS,
        started_at=timezone.now() - datetime.timedelta(seconds=seconds),
        ended_at=None,
        duration_ms=None,
    )


def test_a_run_past_its_max_duration_is_late_and_mailed_once_and_goes_on(
    mailoutbox, django_capture_on_commit_callbacks
):
    data_flow = DataFlowFactory(name="orders", max_duration=60, alert_emails="ops@example.com")
    not_due(data_flow)
    run = running_for(data_flow, 120)

    with django_capture_on_commit_callbacks(execute=True):
        run_heartbeat()
    with django_capture_on_commit_callbacks(execute=True):
        run_heartbeat()

    run.refresh_from_db()
    assert run.status == RunStatus.IN_PROGRESS
    assert run.late_since is not None
    assert [message.subject for message in mailoutbox] == [
        f"[dataflows] orders: run {run.pk} is late"
    ]
    assert "longer than 60 seconds (its max_duration)" in mailoutbox[0].body


def test_a_run_within_its_max_duration_or_without_one_is_not_late():
    within = DataFlowFactory(max_duration=3600)
    unlimited = DataFlowFactory()
    not_due(within)
    not_due(unlimited)
    runs = [running_for(within, 120), running_for(unlimited, 100_000)]

    run_heartbeat()

    assert [DataFlow.objects.get(pk=r.data_flow_id).runs.get().late_since for r in runs] == [
        None,
        None,
    ]


def test_a_late_run_shows_as_late_in_the_api():
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    data_flow = DataFlowFactory(max_duration=1)
    not_due(data_flow)
    run = running_for(data_flow, 10)
    run_heartbeat()
    api = APIClient()
    api.force_authenticate(UserFactory(is_staff=True, is_superuser=True))

    assert api.get(f"/dataflows/api/runs/{run.pk}/").json()["late"] is True
