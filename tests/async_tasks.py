"""Plain Celery tasks the tests and the benchmark send next to the dataflows task.

``mark`` is a sentinel: a worker consuming one queue with one process executes its
messages in order, so once ``mark`` has run, every message sent before it has been handled.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task


@shared_task(name="tests.async_tasks.noop", ignore_result=True)
def noop() -> None:
    """Do nothing: the raw Celery baseline of bench/celery_throughput.py."""


@shared_task(name="tests.async_tasks.touch", ignore_result=True)
def touch(record_id: int) -> None:
    """One durable single-row UPDATE: the floor of bench/celery_throughput.py."""
    from tests.testapp.models import Record

    Record.objects.filter(pk=record_id).update(label="touched")


@shared_task(name="tests.async_tasks.mark", ignore_result=True)
def mark(label: str) -> None:
    """Write a ``Record`` labelled ``label``."""
    from tests.testapp.models import Record

    Record.objects.create(label=label)


def record_run_event(sender: object, *, signal: object, **payload: Any) -> None:
    """Receiver of ``run_started`` and ``run_finished`` in the workers the tests start."""
    from django_dataflows import signals
    from tests.testapp.models import Record

    name = "run_started" if signal is signals.run_started else "run_finished"
    timed = "timed" if payload["duration"] is not None else "untimed"
    Record.objects.create(
        label=f"{name}:{payload['flow_name']}:{payload['attempt']}:{payload['status']}:{timed}",
        run_id=payload["run_id"],
    )
