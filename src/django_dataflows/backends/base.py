"""The interface every execution backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django_dataflows.exceptions import EnqueueNotTried

if TYPE_CHECKING:
    from django.core.checks import CheckMessage

    from django_dataflows.models import DataFlowRun


class BaseBackend(ABC):
    """Takes pending runs and has them executed by ``FlowExecutor``.

    ``enqueue()`` is called after the transaction that created the run has committed. It
    must raise if it could not accept the run (the run is then marked failed and the flow
    stays due); it must not raise because the *flow* failed - that is recorded on the run.
    ``enqueue_many()`` takes a heartbeat's batch; override it where the backend can do
    once per batch what ``enqueue()`` does per run (a broker connection, say).
    """

    #: Runs execute outside the calling process: a run handed over is still pending when
    #: ``trigger_run()`` returns (``False``: it has finished, and is reloaded to show it).
    supports_async: bool = False
    #: ``enqueue()`` takes ``delay=`` (seconds before the run may start); ``dispatch()``
    #: refuses a delay for a backend without it. Retries with backoff need it.
    supports_defer: bool = False

    @abstractmethod
    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        """Accept ``run`` for execution (not before ``delay`` seconds, if given)."""

    def enqueue_many(self, runs: Sequence[DataFlowRun]) -> list[tuple[DataFlowRun, Exception]]:
        """Accept each of ``runs``; return the runs refused, each with the reason.

        The default calls :meth:`enqueue` per run. The first refusal ends the batch (see
        :func:`refused_from`): a backend that has just refused a run (its broker down, or
        frozen until a timeout) is not asked again for each of the others.
        """
        for index, run in enumerate(runs):
            try:
                self.enqueue(run)
            except Exception as exc:
                return refused_from(runs, index, exc)
        return []

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        """System-check messages about this backend's configuration."""
        return []


def refused_from(
    runs: Sequence[DataFlowRun], index: int, exc: Exception
) -> list[tuple[DataFlowRun, Exception]]:
    """``runs[index]`` refused with ``exc``, and every run after it not tried.

    Trying each remaining run against a broker that is down or frozen would multiply the
    wait by the batch's size, past any web server's timeout; their slots are given back
    at once instead (:class:`~django_dataflows.exceptions.EnqueueNotTried`).
    """
    refused = runs[index]
    not_tried: list[tuple[DataFlowRun, Exception]] = [
        (run, EnqueueNotTried(refused.pk, exc)) for run in runs[index + 1 :]
    ]
    return [(refused, exc), *not_tried]
