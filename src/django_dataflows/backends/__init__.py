"""Execution backends: where a triggered run is executed.

``DATAFLOWS["BACKEND"]`` names the backend class by dotted path (a setting, so trusted).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import DataFlowsImproperlyConfigured, EnqueueFailed

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


def dispatch(run: DataFlowRun) -> None:
    """Hand a pending run to the configured backend.

    Sends ``run_enqueued`` first. If the backend cannot take the run, the run is marked
    ``failed`` ("could not enqueue"), the flow is left due, and ``EnqueueFailed`` is raised.
    """
    from django_dataflows.executor import FlowExecutor

    emit("run_enqueued", run)
    try:
        # Inside the try: a backend that cannot even be loaded (checks don't run under a
        # WSGI server) must fail the run now, not leave it pending until the reaper.
        get_backend().enqueue(run)
    except Exception as exc:
        logger.exception("Could not enqueue run %s with %s", run.pk, app_settings.BACKEND)
        FlowExecutor.record_enqueue_failure(run, exc)
        raise EnqueueFailed(f"Could not enqueue run {run.pk}: {exc}") from exc
