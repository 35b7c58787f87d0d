"""The interface every execution backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

    from django_dataflows.models import DataFlowRun


class BaseBackend(ABC):
    """Takes pending runs and has them executed by ``FlowExecutor``.

    ``enqueue()`` is called after the transaction that created the run has committed. It
    must raise if it could not accept the run (the run is then marked failed and the flow
    stays due); it must not raise because the *flow* failed - that is recorded on the run.
    """

    #: Runs execute outside the calling process.
    supports_async: bool = False
    #: Honours ``DataFlow.queue``.
    supports_queues: bool = False
    #: Retries failed runs up to ``max_retries``.
    supports_retries: bool = False

    @abstractmethod
    def enqueue(self, run: DataFlowRun) -> None:
        """Accept ``run`` for execution."""

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        """System-check messages about this backend's configuration."""
        return []
