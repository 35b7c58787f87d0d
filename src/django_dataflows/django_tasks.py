"""The Django Tasks task that executes a run; ``DjangoTasksBackend`` enqueues it.

Its path, ``django_dataflows.django_tasks.run_data_flow``, is what a Tasks backend stores
and what its worker imports. The module imports the Tasks framework (``django.tasks``, or
the ``django-tasks`` backport on Django 5.2), so it is imported only when a run is
enqueued or executed.
"""

from __future__ import annotations

from django_dataflows.backends.django_tasks import (
    TASK_BACKEND_ALIAS,
    execute_run,
    tasks_framework,
)
from django_dataflows.conf import app_settings

__all__ = ["run_data_flow"]


# The framework validates the queue here, against TASKS["default"]["QUEUES"] (checked by
# dataflows.E113); each run is enqueued on its own queue with .using(queue_name=...).
@tasks_framework().task(  # type: ignore[untyped-decorator]
    queue_name=app_settings.DEFAULT_QUEUE, backend=TASK_BACKEND_ALIAS
)
def run_data_flow(run_id: int) -> None:
    """Execute the pending run ``run_id`` (see ``backends.django_tasks.execute_run``)."""
    execute_run(run_id)
