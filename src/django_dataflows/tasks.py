"""The Celery task that executes a run: ``django_dataflows.run_data_flow``.

The host project's ``app.autodiscover_tasks()`` finds this module in the worker;
:class:`~django_dataflows.backends.celery.CeleryBackend` sends its messages. Results are
ignored: the run row is the record.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure

from django_dataflows.backends.celery import TASK_NAME, execute_run, record_lost_process
from django_dataflows.runs.execution import register_timeout_exception

# The flow's timeout is the task's soft time limit: a run it interrupts ends ``timed_out``.
register_timeout_exception(SoftTimeLimitExceeded)


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def run_data_flow(run_id: int, trace: dict[str, str] | None = None) -> None:
    """Execute the pending run ``run_id`` (see ``django_dataflows.backends.celery.execute_run``);
    ``trace`` is the trace context of its hand-over, if any."""
    execute_run(run_id, trace)


def _record_lost_process(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    **kwargs: Any,
) -> None:
    # Sent in the worker's main process when the pool process running the task died, or
    # was killed at the hard time limit: the task's own code never got to record it.
    if getattr(sender, "name", None) != TASK_NAME or not args:
        return
    if isinstance(exception, WorkerLostError | TimeLimitExceeded):
        record_lost_process(
            int(args[0]), exception, timed_out=isinstance(exception, TimeLimitExceeded)
        )


task_failure.connect(_record_lost_process, weak=False, dispatch_uid="dataflows-lost-process")
