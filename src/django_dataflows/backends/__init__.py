"""Execution backends: where a triggered run is executed, and :func:`trigger_run`.

``DATAFLOWS["BACKEND"]`` names the backend class by dotted path (a setting, so trusted).
Every run starts through :func:`trigger_run` (one run) or the heartbeat's claim followed
by :func:`dispatch_many` (a batch); both hand runs over with the same code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils.module_loading import import_string

from django_dataflows.bookkeeping import create_pending_run
from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import (
    DataFlowsImproperlyConfigured,
    EnqueueFailed,
    EnqueueNotTried,
)
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import RunTrigger

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from django_dataflows.backends.base import BaseBackend
    from django_dataflows.models import DataFlow, DataFlowRun

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


def trigger_run(
    data_flow: DataFlow,
    trigger: str = RunTrigger.MANUAL,
    user: AbstractBaseUser | AnonymousUser | None = None,
    *,
    input: dict[str, Any] | None = None,
    attempt: int = 1,
    delay: float | None = None,
    backend: BaseBackend | None = None,
) -> DataFlowRun:
    """Start a run of ``data_flow``: record it pending, hand it to the backend after commit.

    The one way a run starts (``DataFlow.trigger_run()`` lands here; the admin, the API,
    ``dataflows_run``, run control's retry and Celery's retries call it). ``backend``
    overrides the configured one (``dataflows_run`` runs in the foreground with the sync
    backend); ``delay`` defers the start (retries). See :func:`hand_over`.
    """
    run = create_pending_run(data_flow, trigger=trigger, user=user, attempt=attempt, input=input)
    hand_over(run, delay=delay, backend=backend)
    return run


def hand_over(
    run: DataFlowRun, *, delay: float | None = None, backend: BaseBackend | None = None
) -> None:
    """Hand a pending run to the backend, once the transaction that made it has committed.

    Outside a transaction it is handed over now; a backend that runs in-process
    (``supports_async`` false) has finished the run on return, so ``run`` is reloaded to
    show its outcome. ``EnqueueFailed`` if the backend refused it. Inside a transaction
    (``ATOMIC_REQUESTS``, say) it is handed over on commit, and a refusal is recorded on
    the run, as nobody is left to catch it.
    """
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(partial(_dispatch_after_commit, run, delay, backend))
        return
    dispatch(run, delay=delay, backend=backend)
    if not (backend or get_backend()).supports_async:
        run.refresh_from_db()


def _dispatch_after_commit(
    run: DataFlowRun, delay: float | None, backend: BaseBackend | None
) -> None:
    # A refusal is logged by dispatch() and recorded on the run.
    with contextlib.suppress(EnqueueFailed):
        dispatch(run, delay=delay, backend=backend)


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
    reason = refused[0][1]
    logger.error("%s runs of this batch were not handed over: %s", len(refused), reason)
    FlowExecutor.record_not_tried([run for run, _ in refused], reason)


def _refused(run: DataFlowRun, exc: Exception) -> None:
    logger.error(
        "Could not enqueue run %s with %s: %s",
        run.pk,
        app_settings.BACKEND,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    FlowExecutor.record_enqueue_failure(run, exc)
