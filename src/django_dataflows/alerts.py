"""E-mail alerts: a run failed, a flow is overdue, a flow recovered; once per episode.

Receivers of the existing signals (connected in :mod:`django_dataflows.apps`), so the
executor and the heartbeat know nothing of e-mail:

* ``run_finished`` with a failed or timed-out run counts a consecutive failure. The first
  failure of an episode sends one alert; a flow that fails every minute sends no more.
  With ``disable_after_failures``, the failure that reaches it disables the flow and
  says so in an alert of its own.
* ``flow_overdue`` (sent by the heartbeat once per overdue episode) sends one alert.
* ``run_late`` (sent by the heartbeat once per run in progress past its flow's
  ``max_duration``) sends one alert; the run goes on.
* ``run_finished`` with a successful run ends both kinds of episode and, if one was open,
  sends one "recovered" message.

Messages go to the flow's ``alert_emails``, else ``DATAFLOWS["ALERT_EMAILS"]``, through
Django's e-mail framework, after the transaction that recorded the change commits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Any

from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, row_lock

logger = logging.getLogger("django_dataflows.alerts")

SUBJECT_PREFIX = "[dataflows] "
FAILURE_STATUSES = (RunStatus.FAILED, RunStatus.TIMED_OUT)


def connect() -> None:
    """Connect the receivers (idempotent: ``dispatch_uid``)."""
    signals.run_finished.connect(
        on_run_finished, sender=DataFlow, dispatch_uid="dataflows.alerts.run_finished"
    )
    signals.flow_overdue.connect(
        on_flow_overdue, sender=DataFlow, dispatch_uid="dataflows.alerts.flow_overdue"
    )
    signals.run_late.connect(on_run_late, sender=DataFlow, dispatch_uid="dataflows.alerts.run_late")


def on_run_finished(sender: Any, run: DataFlowRun, status: str, **kwargs: Any) -> None:
    if status in FAILURE_STATUSES:
        record_failure(run)
    elif status == RunStatus.SUCCESS:
        record_success(run)


def on_flow_overdue(sender: Any, data_flow: DataFlow, since: datetime, **kwargs: Any) -> None:
    lines = [
        f"Data flow {data_flow.name!r} has had no successful run for "
        f"{data_flow.alert_after} seconds (its alert_after).",
        "",
        f"Overdue since: {_when(since)}",
        f"Last run: {_when(data_flow.last_run_at)} ({data_flow.last_run_status or 'never run'})",
        f"Enabled: {'yes' if data_flow.enabled else 'no'}",
        "",
        "You are told once; the next successful run ends this and sends a recovery message.",
    ]
    _send_after_commit(data_flow, f"{data_flow.name} is overdue", lines)


def on_run_late(sender: Any, run: DataFlowRun, since: datetime, **kwargs: Any) -> None:
    data_flow = run.data_flow
    lines = [
        f"Run {run.pk} of data flow {data_flow.name!r} has been in progress for longer than "
        f"{data_flow.max_duration} seconds (its max_duration).",
        "",
        f"Started: {_when(run.started_at)}",
        f"Found late: {_when(since)}",
        f"Trigger: {run.trigger}",
        "",
        "The run goes on; you are told once per run.",
    ]
    _send_after_commit(data_flow, f"{data_flow.name}: run {run.pk} is late", lines)


def record_failure(run: DataFlowRun) -> None:
    """Count a failed run; alert on the first failure of an episode and on disabling."""
    with transaction.atomic():
        row = (
            row_lock(DataFlow.objects.filter(pk=run.data_flow_id))
            .values("consecutive_failures", "disable_after_failures", "enabled")
            .first()
        )
        if row is None:  # the flow was deleted meanwhile
            return
        failures = row["consecutive_failures"] + 1
        limit = row["disable_after_failures"]
        disable = bool(row["enabled"] and limit is not None and failures >= limit)
        DataFlow.objects.filter(pk=run.data_flow_id).update(consecutive_failures=failures)
        data_flow = run.data_flow
        data_flow.consecutive_failures = failures
        if disable:
            data_flow.enabled = True  # as the locked row says
            data_flow.set_enabled(False)
            logger.warning(
                "Data flow %r disabled after %d consecutive failed runs", data_flow.name, failures
            )
        if failures == 1 or disable:
            _send_after_commit(data_flow, *_failure_message(run, failures, disabled=disable))


def _failure_message(run: DataFlowRun, failures: int, *, disabled: bool) -> tuple[str, list[str]]:
    data_flow = run.data_flow
    status = RunStatus(run.status).label.lower()
    subject = f"{data_flow.name}: run {run.pk} {status}"
    if disabled:
        subject += " - flow disabled"
    lines = [
        f"Run {run.pk} of data flow {data_flow.name!r} {status}.",
        "",
        f"Error: {run.error_message or '-'}",
        f"Trigger: {run.trigger}",
        f"Started: {_when(run.started_at)}",
        f"Ended: {_when(run.ended_at)}",
        f"Consecutive failed runs: {failures}",
        "",
    ]
    if disabled:
        lines += [
            f"The flow has been DISABLED after {failures} consecutive failed runs "
            "(its disable_after_failures). Enable it again once the cause is fixed.",
        ]
    else:
        lines += [
            "You are told once per failure episode: further failed runs send nothing until "
            "the flow has succeeded again (which sends a recovery message).",
        ]
    return subject, lines


def record_success(run: DataFlowRun) -> None:
    """End an open failure or overdue episode; say so once."""
    # The common case (nothing to recover from) costs one read by primary key, or none when
    # the worker's outcome statement read the flow's alert state with it.
    if run.flow_alert_state == (0, None):
        return
    flows = DataFlow.objects.filter(pk=run.data_flow_id)
    if run.flow_alert_state is None and (
        flows.filter(consecutive_failures=0, overdue_episode_since__isnull=True).exists()
    ):
        return
    with transaction.atomic():
        row = row_lock(flows).values("consecutive_failures", "overdue_episode_since").first()
        if row is None:
            return
        failures, overdue_since = row["consecutive_failures"], row["overdue_episode_since"]
        if not failures and overdue_since is None:
            return  # another process recorded the recovery first
        flows.update(consecutive_failures=0, overdue_episode_since=None)
        data_flow = run.data_flow
        data_flow.consecutive_failures, data_flow.overdue_episode_since = 0, None
        lines = [f"Run {run.pk} of data flow {data_flow.name!r} succeeded.", ""]
        if failures:
            lines.append(f"It ends a run of {failures} consecutive failed runs.")
        if overdue_since is not None:
            lines.append(f"The flow had been overdue since {_when(overdue_since)}.")
        if not data_flow.enabled:
            lines.append("The flow is disabled: enable it to resume its schedule.")
        _send_after_commit(data_flow, f"{data_flow.name} recovered", lines)


def _when(moment: datetime | None) -> str:
    return timezone.localtime(moment).isoformat(timespec="seconds") if moment else "never"


def _send_after_commit(data_flow: DataFlow, subject: str, lines: list[str]) -> None:
    recipients = data_flow.alert_recipients
    if not recipients:
        return
    transaction.on_commit(
        partial(_send, SUBJECT_PREFIX + subject, "\n".join(lines) + "\n", recipients),
        robust=True,
    )


def _send(subject: str, body: str, recipients: list[str]) -> None:
    try:
        send_mail(subject, body, None, recipients)
    except Exception:
        # A mail server that is down must not turn a finished run or a heartbeat into an
        # error; the log keeps what could not be sent.
        logger.exception("Could not send the alert %r to %s", subject, ", ".join(recipients))
