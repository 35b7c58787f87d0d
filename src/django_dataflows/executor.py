"""``FlowExecutor``: run a data flow and record what happened; steer its runs.

The public service. Executing and recording live in the run engine
(:class:`~django_dataflows.runs.execution.RunExecutor`, which the backends call); resuming
and retrying hand a run to a backend again (:mod:`django_dataflows.runs.starting`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_dataflows.exceptions import FlowTimeout
from django_dataflows.runs import starting
from django_dataflows.runs.execution import (
    CANCELLED_AT_CHECKPOINT,
    Redelivery,
    RunExecutor,
    register_timeout_exception,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from django_dataflows.models import DataFlowRun

__all__ = [
    "CANCELLED_AT_CHECKPOINT",
    "FlowExecutor",
    "FlowTimeout",
    "Redelivery",
    "register_timeout_exception",
]


class FlowExecutor(RunExecutor):
    """Run a data flow and record what happened; steer runs (cancel, pause, resume, retry).

    ``FlowExecutor.execute(data_flow)`` is the single entry point: it records a run,
    instantiates the flow with the DataFlow's configuration, calls ``run()``, stores the
    outcome on the run and the flow, and returns the flow's result. On failure it stores
    the message and backtrace and re-raises the original exception. A run stopped at a
    checkpoint (cancelled or paused) returns ``None``.
    """

    @classmethod
    def resume(
        cls, run: DataFlowRun, *, on_recorded: Callable[[DataFlowRun], object] | None = None
    ) -> DataFlowRun:
        """Continue the paused ``run``; see :func:`django_dataflows.runs.starting.resume`."""
        return starting.resume(run, on_recorded=on_recorded)

    @classmethod
    def retry(
        cls,
        run: DataFlowRun,
        *,
        user: AbstractBaseUser | AnonymousUser | None = None,
        on_recorded: Callable[[DataFlowRun], object] | None = None,
    ) -> DataFlowRun:
        """A new run like the finished ``run``; see :func:`django_dataflows.runs.starting.retry`."""
        return starting.retry(run, user=user, on_recorded=on_recorded)
