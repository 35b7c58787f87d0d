"""The Celery backend: each run is a Celery task on the flow's queue, retried with backoff.

This module imports without Celery installed (so that a missing Celery is reported by the
``dataflows.E101`` system check rather than by an import error); Celery itself is imported
only in :mod:`django_dataflows.tasks`, which holds the task, and inside the functions here.

One message executes one run. A failed attempt that may be retried is followed by a new
``pending`` run (trigger ``retry``, ``attempt + 1``) and a new message with a countdown, so
every attempt has its own row, status, error and Celery task id in the run history.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_dataflows.backends import load_backend
from django_dataflows.backends.base import BaseBackend, refused_from
from django_dataflows.conf import app_settings
from django_dataflows.exceptions import (
    DataFlowsImproperlyConfigured,
    EnqueueFailed,
    PermanentFlowError,
    RunAlreadyActive,
)
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger
from django_dataflows.runs.execution import RunExecutor
from django_dataflows.runs.starting import trigger_run
from django_dataflows.tracing import outgoing_context, received_context

logger = logging.getLogger("django_dataflows.backends.celery")

#: The task's registered name; stable, so queued messages survive a refactoring.
TASK_NAME = "django_dataflows.run_data_flow"
#: This backend's dotted path, as ``DATAFLOWS["BACKEND"]`` names it.
CELERY_BACKEND = "django_dataflows.backends.celery.CeleryBackend"
#: Seconds between the soft time limit (the flow's timeout) and the hard one that kills the
#: worker process: time for the flow to clean up and for the run to be recorded ``timed_out``.
HARD_TIME_LIMIT_GRACE = 30
#: The longest wait before a retry, whatever the attempt (seconds).
MAX_RETRY_DELAY = 600.0
#: How ``apply_async`` retries a broker connection: once, at once (Celery's default tries
#: four times). With the broker down, an enqueue fails after two connection attempts, each
#: bounded by the transport's connect timeout, instead of holding up a heartbeat.
ENQUEUE_RETRY_POLICY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
#: The name of the app Celery makes up when a process has none.
_CELERY_FALLBACK_APP_NAME = "default"


def retry_delay(attempt: int, *, backoff: float, timeout: float) -> float:
    """Seconds to wait before the attempt after ``attempt`` (counted from 1) failed.

    Exponential from ``backoff`` seconds (``backoff``, ``2 * backoff``, ``4 * backoff`` …),
    capped at ten minutes and at half the flow's timeout, with "equal jitter": a random
    point in the upper half of that, so that flows which failed together do not all come
    back at the same moment. The timeout cap keeps a waiting retry run from being reaped by
    the heartbeat as one that no worker picked up.
    """
    ceiling = min(backoff * 2.0 ** (attempt - 1), MAX_RETRY_DELAY, timeout / 2)
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def _current_celery_app() -> Any:
    """The project's Celery app; ``ImproperlyConfigured`` if the process has none.

    Without an app, Celery makes up an unconfigured one that sends to
    ``amqp://guest@localhost``: refuse that with a message saying what to do. (An app made
    with ``DJANGO_SETTINGS_MODULE`` set is the default of every thread: Celery's Django
    fix-up calls ``app.set_default()``.)
    """
    from celery import current_app

    app = current_app._get_current_object()
    if app.main == _CELERY_FALLBACK_APP_NAME and not app.fixups:
        raise DataFlowsImproperlyConfigured(
            "No Celery app is set up in this process, so Celery would use an unconfigured "
            "one. Define your project's app in proj/celery.py and import it in "
            "proj/__init__.py, as in Celery's 'First steps with Django'."
        )
    return app


class CeleryBackend(BaseBackend):
    """Send each run to a Celery worker as the task ``django_dataflows.run_data_flow``.

    The message goes to the run's queue (the flow's ``queue``, else
    ``DATAFLOWS["DEFAULT_QUEUE"]``), carries the flow's timeout as Celery's soft time limit,
    and names the flow and run in its headers (``dataflows_flow``, ``dataflows_run_id``,
    ``dataflows_attempt``). Its task id is the run's ``task_id``, assigned when the run was
    created, so enqueueing writes nothing more to the database. The message is sent by the
    task's name, so the process that sends it need not import the task module.
    """

    supports_async = True
    supports_defer = True

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        """Publish the run's message (after ``delay`` seconds); raise if the broker refuses."""
        app = _current_celery_app()
        self._publish(app, run, app_settings.RUN_TIMEOUT, countdown=delay)

    def enqueue_many(self, runs: Sequence[DataFlowRun]) -> list[tuple[DataFlowRun, Exception]]:
        """Publish a batch on one producer (one broker connection), not one per message."""
        try:
            app = _current_celery_app()
        except DataFlowsImproperlyConfigured as exc:
            return [(run, exc) for run in runs]
        default_timeout = app_settings.RUN_TIMEOUT
        published = 0
        try:
            with app.producer_or_acquire() as producer:
                for run in runs:
                    self._publish(app, run, default_timeout, producer=producer)
                    published += 1
        except Exception as exc:
            # The first failure or timeout ends the batch (each retry of a frozen broker
            # costs a socket timeout): the rest are given back, not tried.
            return refused_from(runs, min(published, len(runs) - 1), exc)
        return []

    @staticmethod
    def _publish(
        app: Any,
        run: DataFlowRun,
        default_timeout: int,
        *,
        countdown: float | None = None,
        producer: Any = None,
    ) -> None:
        data_flow = run.data_flow
        timeout = data_flow.timeout or default_timeout
        app.send_task(
            TASK_NAME,
            args=(run.pk,),
            # The trace context of the hand-over, when there is one (the otel extra).
            kwargs=_trace_kwargs(),
            task_id=run.task_id,
            queue=run.queue or data_flow.effective_queue,
            countdown=countdown,
            soft_time_limit=timeout,
            time_limit=timeout + HARD_TIME_LIMIT_GRACE,
            headers={
                "dataflows_flow": data_flow.name,
                "dataflows_run_id": run.pk,
                "dataflows_attempt": run.attempt,
            },
            producer=producer,
            ignore_result=True,
            retry=True,
            retry_policy=ENQUEUE_RETRY_POLICY,
        )

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        try:
            import celery  # noqa: F401
        except ImportError as exc:
            return [
                Error(
                    f"DATAFLOWS['BACKEND'] is the Celery backend, but Celery cannot be "
                    f"imported: {exc}",
                    hint='Install it with: pip install "django-dataflows[celery]"',
                    id="dataflows.E101",
                )
            ]
        try:
            app = _current_celery_app()
        except DataFlowsImproperlyConfigured as exc:
            return [
                Error(
                    str(exc),
                    hint="See the Celery backend page of the django-dataflows documentation.",
                    id="dataflows.E102",
                )
            ]
        # What Celery's Django fix-up reads: without it, the worker closes every database
        # connection after every task, so each run pays a new connection.
        if not app.conf.get("CELERY_DB_REUSE_MAX"):
            return [
                Warning(
                    "CELERY_DB_REUSE_MAX is not set, so Celery's Django fix-up closes the "
                    "database connection after every task: each run opens a new one "
                    "(about 3 ms on a local PostgreSQL, more over a network), and "
                    "CONN_MAX_AGE does not change that.",
                    hint="Set CELERY_DB_REUSE_MAX = 1000 (with CONN_MAX_AGE) in the settings "
                    "the worker reads; see the Celery backend page.",
                    id="dataflows.W101",
                )
            ]
        return []


# -- in the worker: what the task does -------------------------------------------------


def _trace_kwargs() -> dict[str, Any] | None:
    carrier = outgoing_context()
    return {"trace": carrier} if carrier else None


def execute_run(run_id: int, trace: dict[str, str] | None = None) -> None:
    """Execute the pending run ``run_id``; the body of the Celery task.

    A run that is no longer pending (a duplicated or late message) is logged and skipped. If
    the flow fails and attempts remain, the next attempt is enqueued as a new run; the
    flow's exception is then re-raised so that Celery records the task as failed too.
    """
    with received_context(trace):
        RunExecutor.execute_queued(run_id, on_failure=schedule_retry)


def record_lost_process(run_id: int, exc: BaseException, *, timed_out: bool) -> None:
    """The pool process running run ``run_id`` died (``kill -9``, out of memory, hard limit).

    Called in the worker's main process, which saw it die: the run, still ``in_progress``,
    ends ``failed`` (or ``timed_out`` at the hard time limit) with the reason, and the
    flow's retry policy applies as to any failure. Without this the run would wait for
    the heartbeat to time it out, and never be retried.
    """
    run = DataFlowRun.objects.select_related("data_flow").filter(pk=run_id).first()
    if run is not None and RunExecutor.record_lost_process(run, exc, timed_out=timed_out):
        schedule_retry(run, exc)


def schedule_retry(run: DataFlowRun, exc: BaseException) -> DataFlowRun | None:
    """After ``run`` failed with ``exc``, enqueue the next attempt as a new run, if one is due.

    No retry after a ``PermanentFlowError``, after the last attempt, when the run did not
    end ``failed`` (it timed out, or was cancelled meanwhile), or when the flow has been
    disabled. Returns the new run, if one was handed to the broker.
    """
    data_flow = run.data_flow
    max_retries = data_flow.effective_max_retries
    if run.status != RunStatus.FAILED:
        return None
    if isinstance(exc, PermanentFlowError):
        logger.info("Run %s of %r failed permanently; not retried.", run.pk, data_flow.name)
        return None
    if run.attempt > max_retries:
        logger.warning(
            "Run %s of %r failed on attempt %s, the last one (%s retries allowed).",
            run.pk,
            data_flow.name,
            run.attempt,
            max_retries,
        )
        return None
    if not DataFlow.objects.filter(pk=data_flow.pk, enabled=True).exists():
        logger.info("Run %s of %r not retried: the flow is disabled.", run.pk, data_flow.name)
        return None
    # A retry waits at most half its pickup timeout, else the heartbeat would take it back
    # as never picked up and hand it over again without its countdown.
    delay = retry_delay(
        run.attempt,
        backoff=app_settings.RETRY_BACKOFF,
        timeout=min(data_flow.effective_timeout, app_settings.PICKUP_TIMEOUT),
    )
    try:
        # The one way in, as any run; through Celery whatever the worker's settings name (a
        # worker executing this task is a Celery worker), with the backoff as a delay.
        retry = trigger_run(
            data_flow,
            trigger=RunTrigger.RETRY,
            input=run.input,
            attempt=run.attempt + 1,
            delay=delay,
            backend=load_backend(CELERY_BACKEND),
        )
    except RunAlreadyActive:
        logger.info("Run %s of %r not retried: another run is active.", run.pk, data_flow.name)
        return None
    except EnqueueFailed:
        return None  # logged by dispatch() and recorded on the retry run
    logger.info(
        "Data flow %r: attempt %s will run as run %s in %.1f s.",
        data_flow.name,
        retry.attempt,
        retry.pk,
        delay,
    )
    return retry
