"""A backend that records runs and executes nothing: for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_dataflows.backends.base import BaseBackend
from django_dataflows.runs.execution import RunExecutor

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun


class DummyBackend(BaseBackend):
    """Keep every enqueued run in :attr:`enqueued` and leave it pending.

    In tests: ``get_backend().enqueued`` lists what was handed over; ``clear()`` empties
    it; ``run_all()`` executes the recorded runs in order.
    """

    # Nothing runs anywhere until run_all(): not asynchronous, but it records delays.
    supports_defer = True

    def __init__(self) -> None:
        self.enqueued: list[DataFlowRun] = []
        #: The ``delay`` each deferred run was handed over with, by run id.
        self.delays: dict[int, float] = {}

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        self.enqueued.append(run)
        if delay is not None:
            self.delays[run.pk] = delay

    def clear(self) -> None:
        self.enqueued.clear()
        self.delays.clear()

    def run_all(self) -> None:
        runs, self.enqueued = self.enqueued, []
        for run in runs:
            # The whole flow row: a heartbeat's runs carry only the columns the claim read.
            run.data_flow.refresh_from_db()
            try:
                RunExecutor.execute(run.data_flow, run=run)
            except Exception:  # noqa: S112 - recorded on the run; run the rest
                continue
