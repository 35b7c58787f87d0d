"""The Django Tasks task that executes a run; ``DjangoTasksBackend`` enqueues it.

Its path, ``django_dataflows.tasks_django.run_data_flow``, is what a Tasks backend stores
and what its worker imports. The module imports the Tasks framework (``django.tasks``, or
the ``django-tasks`` backport on Django 5.2), so it is imported only when a run is
enqueued or executed. (It was ``django_dataflows.django_tasks`` before 0.2: the same name
as the backend's module.)
"""

from __future__ import annotations

from django_dataflows.backends.tasks_framework import TASK_BACKEND_ALIAS, tasks_framework
from django_dataflows.conf import app_settings
from django_dataflows.runs.execution import RunExecutor
from django_dataflows.tracing import received_context

__all__ = ["run_data_flow"]


# The framework validates the queue here, against TASKS["default"]["QUEUES"] (checked by
# dataflows.E113); each run is enqueued on its own queue with .using(queue_name=...).
@tasks_framework().task(  # type: ignore[untyped-decorator]
    queue_name=app_settings.DEFAULT_QUEUE, backend=TASK_BACKEND_ALIAS
)
def run_data_flow(run_id: int, trace: dict[str, str] | None = None) -> None:
    """Execute the pending run ``run_id``: what a worker does with the task.

    A run that is no longer pending (the task was enqueued twice, or the run was cancelled
    or timed out meanwhile) is logged and skipped. The flow's exception propagates, so the
    framework records the task as failed as well. (The framework has no retries.)
    """
    with received_context(trace):
        RunExecutor.execute_queued(run_id)
