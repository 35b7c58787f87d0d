"""A backend that records runs and executes nothing: for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_dataflows.backends.base import BaseBackend
from django_dataflows.executor import FlowExecutor

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun


class DummyBackend(BaseBackend):
    """Keep every enqueued run in :attr:`enqueued` and leave it pending.

    In tests: ``get_backend().enqueued`` lists what was handed over; ``clear()`` empties
    it; ``run_all()`` executes the recorded runs in order.
    """

    supports_async = True
    supports_queues = True

    def __init__(self) -> None:
        self.enqueued: list[DataFlowRun] = []

    def enqueue(self, run: DataFlowRun) -> None:
        self.enqueued.append(run)

    def clear(self) -> None:
        self.enqueued.clear()

    def run_all(self) -> None:
        runs, self.enqueued = self.enqueued, []
        for run in runs:
            try:
                FlowExecutor.execute(run.data_flow, run=run)
            except Exception:  # noqa: S112 - recorded on the run; run the rest
                continue
