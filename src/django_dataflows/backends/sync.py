"""The default backend: execute runs in the calling process."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django_dataflows.backends.base import BaseBackend, refused_from
from django_dataflows.conf import app_settings
from django_dataflows.runs.execution import RunExecutor

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun

logger = logging.getLogger("django_dataflows.backends.sync")


class SyncBackend(BaseBackend):
    """Run the flow at once, in the process that triggered it (no worker needed).

    The flow's exception is recorded on the run by the executor and logged here; it is
    not raised to the caller, so one failing flow never stops a heartbeat's others.
    """

    def enqueue_many(self, runs: Sequence[DataFlowRun]) -> list[tuple[DataFlowRun, Exception]]:
        """Run a heartbeat's batch one after another, showing the waiting runs are alive.

        A run waiting its turn here is ``pending`` for as long as the runs before it take.
        Before each run, at most every quarter of ``PICKUP_TIMEOUT``, the runs still
        waiting are renewed (:meth:`RunExecutor.renew_pending`), so another heartbeat
        never takes them back from a living batch; if this process dies, they stop being
        renewed and the next heartbeat after ``PICKUP_TIMEOUT`` runs them.
        """
        renew_every = app_settings.PICKUP_TIMEOUT / 4
        renewed = time.monotonic()
        for index, run in enumerate(runs):
            if time.monotonic() - renewed >= renew_every:
                RunExecutor.renew_pending(runs[index:])
                renewed = time.monotonic()
            try:
                self.enqueue(run)
            except Exception as exc:
                return refused_from(runs, index, exc)
        return []

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        # What a worker does with a message, here: the same path, statements and commits.
        try:
            RunExecutor.execute_queued(run.pk)
        except Exception:
            logger.info("Run %s of %r failed; see the run record.", run.pk, run.data_flow.name)
