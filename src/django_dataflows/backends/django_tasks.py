"""The Django Tasks backend: each run is a task of Django's Tasks framework.

The framework is ``django.tasks`` on Django 6 and later, and the ``django-tasks`` backport
on Django 5.2. It is imported only here and in :mod:`django_dataflows.tasks_django` (the
module that defines the task), so this module imports without it and a missing framework
is reported by the ``dataflows.E111`` system check.

The framework has no retries and no time limits: a failed run stays failed until the
flow's next scheduled run, and a run that overruns its timeout is ended ``timed_out`` by
the heartbeat.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.checks import CheckMessage, Error

from django_dataflows.backends.base import BaseBackend
from django_dataflows.backends.tasks_framework import TASK_BACKEND_ALIAS, tasks_framework
from django_dataflows.conf import app_settings
from django_dataflows.models import DataFlowRun
from django_dataflows.runs.execution import RunExecutor
from django_dataflows.tracing import outgoing_context

logger = logging.getLogger("django_dataflows.backends.django_tasks")


class DjangoTasksBackend(BaseBackend):
    """Enqueue each run as the task ``django_dataflows.tasks_django.run_data_flow``.

    The task goes to the Tasks backend ``TASKS["default"]``, on the run's queue (the flow's
    ``queue``, else ``DATAFLOWS["DEFAULT_QUEUE"]``); its result id is stored as the run's
    ``task_id``. A worker of that backend (``manage.py db_worker`` for ``django-tasks-db``)
    executes it.
    """

    supports_async = True

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        from django_dataflows.tasks_django import run_data_flow

        queue = run.queue or run.data_flow.effective_queue
        task = run_data_flow.using(queue_name=queue, backend=TASK_BACKEND_ALIAS)
        # The trace context of the hand-over, when there is one (the otel extra).
        carrier = outgoing_context()
        result = task.enqueue(run.pk, trace=carrier) if carrier else task.enqueue(run.pk)
        RunExecutor.record_enqueued(run, task_id=str(result.id), queue=queue)

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        try:
            framework = tasks_framework()
        except ImportError as exc:
            return [
                Error(
                    "DATAFLOWS['BACKEND'] is the Django Tasks backend, but neither django.tasks "
                    f"(Django 6+) nor the django-tasks backport can be imported: {exc}",
                    hint='On Django 5.2, install it with: pip install "django-dataflows[tasks]"',
                    id="dataflows.E111",
                )
            ]
        try:
            task_backend = framework.task_backends[TASK_BACKEND_ALIAS]
        except Exception as exc:  # the framework raises its own ImproperlyConfigured subclass
            return [
                Error(
                    f"The Tasks backend settings.TASKS[{TASK_BACKEND_ALIAS!r}] cannot be "
                    f"loaded: {exc}",
                    id="dataflows.E112",
                )
            ]
        return _check_queues(task_backend.queues) + _check_queue_name_length(task_backend)


def _check_queues(backend_queues: set[str]) -> list[CheckMessage]:
    """Every queue a flow may use must be one the Tasks backend accepts (empty: any)."""
    if not backend_queues:
        return []
    wanted = {app_settings.DEFAULT_QUEUE, *(app_settings.ALLOWED_QUEUES or [])}
    missing = sorted(wanted - backend_queues)
    if not missing:
        return []
    return [
        Error(
            f"Queues {', '.join(map(repr, missing))} of DATAFLOWS['DEFAULT_QUEUE'] / "
            f"['ALLOWED_QUEUES'] are not in settings.TASKS[{TASK_BACKEND_ALIAS!r}]['QUEUES'] "
            f"({', '.join(sorted(backend_queues))}).",
            hint="Add them to the Tasks backend's QUEUES, or set QUEUES to [] to accept any.",
            id="dataflows.E113",
        )
    ]


#: django-tasks-db keeps the queue name in a varchar(32); our model allows 100 characters.
DJANGO_TASKS_DB_QUEUE_LENGTH = 32


def _check_queue_name_length(task_backend: Any) -> list[CheckMessage]:
    """Names longer than django-tasks-db's column would fail every enqueue on PostgreSQL."""
    if not type(task_backend).__module__.startswith("django_tasks_db"):
        return []
    wanted = {app_settings.DEFAULT_QUEUE, *(app_settings.ALLOWED_QUEUES or [])}
    too_long = sorted(name for name in wanted if len(name) > DJANGO_TASKS_DB_QUEUE_LENGTH)
    if not too_long:
        return []
    return [
        Error(
            f"Queues {', '.join(map(repr, too_long))} are longer than the "
            f"{DJANGO_TASKS_DB_QUEUE_LENGTH} characters django-tasks-db can store.",
            hint="Use shorter queue names, and set ALLOWED_QUEUES so the admin refuses "
            "longer ones.",
            id="dataflows.E114",
        )
    ]
