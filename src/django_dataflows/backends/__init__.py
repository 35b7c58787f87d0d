"""Execution backends: where a triggered run is executed.

``DATAFLOWS["BACKEND"]`` names the backend class by dotted path (a setting, so trusted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import (
    DataFlowsImproperlyConfigured,
    EnqueueFailed,
    EnqueueNotTried,
)

if TYPE_CHECKING:
    from django_dataflows.backends.base import BaseBackend
    from django_dataflows.models import DataFlowRun

logger = logging.getLogger("django_dataflows.backends")


@lru_cache(maxsize=8)
def load_backend(path: str) -> BaseBackend:
    """Instantiate the backend class at ``path``; ``ImproperlyConfigured`` if it is wrong."""
    from django_dataflows.backends.base import BaseBackend

    try:
        backend_class = import_string(path)
    except ImportError as exc:
        raise DataFlowsImproperlyConfigured(
            f"Could not import DATAFLOWS['BACKEND'] {path!r}: {exc}"
        ) from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, BaseBackend)):
        raise DataFlowsImproperlyConfigured(
            f"DATAFLOWS['BACKEND'] {path!r} is not a subclass of "
            "django_dataflows.backends.base.BaseBackend."
        )
    return backend_class()


def get_backend() -> BaseBackend:
    """The configured backend (one instance per dotted path)."""
    return load_backend(app_settings.BACKEND)


def dispatch(
    run: DataFlowRun, *, delay: float | None = None, backend: BaseBackend | None = None
) -> None:
    """Hand a pending run to ``backend`` (default: the configured one), after ``delay`` s.

    Sends ``run_enqueued`` first. If the backend cannot take the run, the run is marked
    ``failed`` ("could not enqueue"), the flow is left due, and ``EnqueueFailed`` is raised.
    """
    emit("run_enqueued", run)
    try:
        # Inside the try: a backend that cannot even be loaded (checks don't run under a
        # WSGI server) must fail the run now, not leave it pending until the reaper.
        backend = backend or get_backend()
        if delay is None:
            backend.enqueue(run)
        elif backend.supports_defer:
            backend.enqueue(run, delay=delay)
        else:
            raise DataFlowsImproperlyConfigured(
                f"{type(backend).__name__} cannot start a run after a delay."
            )
    except Exception as exc:
        _refused(run, exc)
        raise EnqueueFailed(f"Could not enqueue run {run.pk}: {exc}") from exc


def dispatch_many(runs: Sequence[DataFlowRun]) -> int:
    """Hand a batch of pending runs (one heartbeat's) to the configured backend.

    The backend's ``enqueue_many()`` does once per batch what can be done once (a broker
    connection); a run it refuses is marked ``failed`` as in :func:`dispatch`, and never
    stops the others. Returns how many were refused.
    """
    if not runs:
        return 0
    for run in runs:
        emit("run_enqueued", run)
    try:
        refused = get_backend().enqueue_many(runs)
    except Exception as error:
        # The backend cannot be loaded, or broke outside its per-run handling.
        refused = [(run, error) for run in runs]
    not_tried: list[tuple[DataFlowRun, Exception]] = [
        (run, exc) for run, exc in refused if isinstance(exc, EnqueueNotTried)
    ]
    for run, exc in refused:
        if not isinstance(exc, EnqueueNotTried):
            _refused(run, exc)
    if not_tried:
        _not_tried(not_tried)
    return len(refused)


def _not_tried(refused: list[tuple[DataFlowRun, Exception]]) -> None:
    """The rest of a batch after a refusal: given back together, in a few statements."""
    from django_dataflows.executor import FlowExecutor

    reason = refused[0][1]
    logger.error("%s runs of this batch were not handed over: %s", len(refused), reason)
    FlowExecutor.record_not_tried([run for run, _ in refused], reason)


def _refused(run: DataFlowRun, exc: Exception) -> None:
    from django_dataflows.executor import FlowExecutor

    logger.error(
        "Could not enqueue run %s with %s: %s",
        run.pk,
        app_settings.BACKEND,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    FlowExecutor.record_enqueue_failure(run, exc)
