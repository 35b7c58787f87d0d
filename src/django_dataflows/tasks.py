"""The Celery task that executes a run: ``django_dataflows.run_data_flow``.

The host project's ``app.autodiscover_tasks()`` finds this module in the worker;
:class:`~django_dataflows.backends.celery.CeleryBackend` sends its messages. Results are
ignored: the run row is the record.
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from django_dataflows.backends.celery import TASK_NAME, execute_run
from django_dataflows.executor import register_timeout_exception

# The flow's timeout is the task's soft time limit: a run it interrupts ends ``timed_out``.
register_timeout_exception(SoftTimeLimitExceeded)


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def run_data_flow(run_id: int) -> None:
    """Execute the pending run ``run_id`` (see ``django_dataflows.backends.celery.execute_run``)."""
    execute_run(run_id)
