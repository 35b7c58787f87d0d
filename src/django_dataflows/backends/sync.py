"""The default backend: execute runs in the calling process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django_dataflows.backends.base import BaseBackend
from django_dataflows.executor import FlowExecutor

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun

logger = logging.getLogger("django_dataflows.backends.sync")


class SyncBackend(BaseBackend):
    """Run the flow at once, in the process that triggered it (no worker needed).

    The flow's exception is recorded on the run by the executor and logged here; it is
    not raised to the caller, so one failing flow never stops a heartbeat's others.
    """

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        # What a worker does with a message, here: the same path, statements and commits.
        try:
            FlowExecutor.execute_queued(run.pk)
        except Exception:
            logger.info("Run %s of %r failed; see the run record.", run.pk, run.data_flow.name)
