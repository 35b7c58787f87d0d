"""How a run starts and is handed to its backend: one layer above the executor and backends.

* :func:`trigger_run` records a pending run (:mod:`~django_dataflows.runs.bookkeeping`) and
  hands it over: the one way a run starts (``DataFlow.trigger_run()``, the admin, the
  API, ``dataflows_run``, retries);
* :func:`dispatch_many` hands over a heartbeat's batch;
* :func:`resume` and :func:`retry` are run control that hands a run over again, or a
  new one.

A backend that refuses a run gets it recorded ``failed`` (its slot given back) by the
executor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from django.db import transaction

from django_dataflows.backends import get_backend
from django_dataflows.backfills import create_backfill
from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import (
    DataFlowsImproperlyConfigured,
    EnqueueFailed,
    EnqueueNotTried,
)
from django_dataflows.models import RunTrigger
from django_dataflows.runs.bookkeeping import create_pending_run
from django_dataflows.runs.execution import RunExecutor
from django_dataflows.runs.transitions import TRANSITIONS, refusal
from django_dataflows.runs.writes import apply

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from django_dataflows.backends.base import BaseBackend
    from django_dataflows.models import DataFlow, DataFlowRun

logger = logging.getLogger("django_dataflows.backends")

__all__ = [
    "create_backfill",
    "create_pending_run",
    "dispatch",
    "dispatch_many",
    "hand_over",
    "resume",
    "retry",
    "trigger_run",
]


def trigger_run(
    data_flow: DataFlow,
    trigger: str = RunTrigger.MANUAL,
    user: AbstractBaseUser | AnonymousUser | None = None,
    *,
    input: dict[str, Any] | None = None,
    attempt: int = 1,
    delay: float | None = None,
    backend: BaseBackend | None = None,
    on_recorded: Callable[[DataFlowRun], object] | None = None,
) -> DataFlowRun:
    """Start a run of ``data_flow``: record it pending, hand it to the backend after commit.

    The one way a run starts (``DataFlow.trigger_run()`` lands here; the admin, the API,
    ``dataflows_run``, run control's retry and Celery's retries call it). ``backend``
    overrides the configured one (``dataflows_run`` runs in the foreground with the sync
    backend); ``delay`` defers the start (retries). ``on_recorded(run)`` is called in the
    transaction that records the run, before it is handed over (the audit trail writes
    there). See :func:`hand_over`.
    """
    with transaction.atomic() if on_recorded else contextlib.nullcontext():
        run = create_pending_run(
            data_flow, trigger=trigger, user=user, attempt=attempt, input=input
        )
        if on_recorded:
            on_recorded(run)
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
    RunExecutor.record_not_tried([run for run, _ in refused], reason)


def _refused(run: DataFlowRun, exc: Exception) -> None:
    logger.error(
        "Could not enqueue run %s with %s: %s",
        run.pk,
        app_settings.BACKEND,
        exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    RunExecutor.record_enqueue_failure(run, exc)


def resume(
    run: DataFlowRun, *, on_recorded: Callable[[DataFlowRun], object] | None = None
) -> DataFlowRun:
    """Continue the paused ``run``: it becomes ``pending`` and goes to the backend again.

    The executor then skips the declared steps that already succeeded, and the flow
    gets the same input and the stored results of those steps. Returns the run, up to
    date (with the in-process backend it has run by then). ``InvalidRunState`` unless
    the run is paused; ``EnqueueFailed`` if the backend refused it. ``on_recorded(run)``
    is called in the transaction of the transition, as in :func:`trigger_run`.
    """
    with transaction.atomic() if on_recorded else contextlib.nullcontext():
        if not apply(TRANSITIONS["resume"], run):
            run.refresh_from_db()
            raise refusal(run, "resume")
        if on_recorded:
            on_recorded(run)
    run.refresh_from_db()
    hand_over(run)
    if not transaction.get_connection().in_atomic_block:
        run.refresh_from_db()
    return run


def retry(
    run: DataFlowRun,
    *,
    user: AbstractBaseUser | AnonymousUser | None = None,
    on_recorded: Callable[[DataFlowRun], object] | None = None,
) -> DataFlowRun:
    """Start a new run like the ``failed``, ``timed_out`` or ``cancelled`` ``run``.

    The new run (trigger ``retry``, the same input, ``attempt + 1``) is returned. It is
    refused like any start while the flow has an active run (``RunAlreadyActive``);
    ``InvalidRunState`` for a run that is active or succeeded.
    """
    run.refresh_from_db()
    if not TRANSITIONS["retry"].allows(run):
        raise refusal(run, "retry")
    return trigger_run(
        run.data_flow,
        trigger=RunTrigger.RETRY,
        user=user,
        input=run.input,
        attempt=run.attempt + 1,
        on_recorded=on_recorded,
    )
