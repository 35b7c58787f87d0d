"""The default backend: execute runs in the calling process.

In a request that asked for it (:func:`run_after_response`: the API's and the admin's
starts), a run handed to this backend is not executed at once: it waits, ``pending``, until
the response has been sent, and is executed then, by the same worker that served the request
(when the server closes the response, Django's ``request_finished``). A client gets its
answer, and the run's id to follow it, without waiting for the run. If the process dies
before, the run stays ``pending`` and the heartbeat hands it over again after
``PICKUP_TIMEOUT``, like any run that no worker took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.signals import request_finished, request_started
from django.db import connections

from django_dataflows.backends.base import BaseBackend
from django_dataflows.conf import app_settings
from django_dataflows.runs.execution import RunExecutor

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun

logger = logging.getLogger("django_dataflows.backends.sync")


@dataclass
class _RequestScope:
    """What the request being served has left to run once its response is sent."""

    defer: bool = False
    runs: list[DataFlowRun] = field(default_factory=list)


class _RequestLocal(threading.local):
    """The request being served by this thread (set by ``request_started``).

    A thread's: under WSGI a request is served by one thread from start to close; under
    ASGI, Django runs a request's signals, sync view and ``close()`` in the one thread it
    keeps for that request (asgiref's thread-sensitive mode), never in the event loop's.
    """

    scope: _RequestScope | None = None


_request = _RequestLocal()


def run_after_response() -> bool:
    """Have the runs this request hands to the sync backend run after its response is sent.

    Called by the views that start runs for a person or a client (the API's start, resume
    and retry; the admin's "Run now", "Run with input…", resume and retry), so that they
    answer at once with the run still ``pending``. Returns whether it applies: only while
    a request is being served by a handler that will close its response (never in a
    management command, a worker, or a view called without a server), so outside one the
    run executes at once, as always. Other backends are unaffected.
    """
    scope = _request.scope
    if scope is None:
        return False
    scope.defer = True
    return True


def _request_began(**kwargs: Any) -> None:
    _request.scope = _RequestScope()


def _response_sent(**kwargs: Any) -> None:
    """Run what the request deferred: its response has been sent (the server closed it)."""
    scope, _request.scope = _request.scope, None
    if scope is None or not scope.runs:
        return
    try:
        run_in_turn(scope.runs)
    finally:
        # Django closed this request's connections just before (close_old_connections);
        # the runs opened new ones, which must not outlive the request either. One inside
        # a transaction (a test's) is left alone, as the test client has Django do.
        for conn in connections.all(initialized_only=True):
            if not conn.in_atomic_block:
                conn.close_if_unusable_or_obsolete()


def connect_request_signals() -> None:
    """Follow requests (``request_started`` / ``request_finished``); called by the app's ready()."""
    request_started.connect(_request_began, dispatch_uid="dataflows-sync-request-started")
    request_finished.connect(_response_sent, dispatch_uid="dataflows-sync-request-finished")


def run_in_turn(runs: Sequence[DataFlowRun]) -> None:
    """Execute ``runs`` one after another, showing the waiting runs are alive.

    A run waiting its turn here is ``pending`` for as long as the runs before it take.
    Before each run, at most every quarter of ``PICKUP_TIMEOUT``, the runs still waiting
    are renewed (:meth:`RunExecutor.renew_pending`), so another heartbeat never takes them
    back from a living process; if this process dies, they stop being renewed and the next
    heartbeat after ``PICKUP_TIMEOUT`` runs them. A failing flow never stops the others.
    """
    renew_every = app_settings.PICKUP_TIMEOUT / 4
    renewed = time.monotonic()
    for index, run in enumerate(runs):
        if time.monotonic() - renewed >= renew_every:
            RunExecutor.renew_pending(runs[index:])
            renewed = time.monotonic()
        execute_now(run)


def execute_now(run: DataFlowRun) -> None:
    """Execute the pending ``run`` here: what a worker does with a message, on the same path."""
    try:
        RunExecutor.execute_queued(run.pk)
    except Exception:
        logger.info("Run %s of %r failed; see the run record.", run.pk, run.data_flow.name)


class SyncBackend(BaseBackend):
    """Run the flow in the process that triggered it (no worker needed).

    At once, or, in a request that called :func:`run_after_response`, once the response
    has been sent. A heartbeat's batch always runs at once, in the heartbeat's request.
    The flow's exception is recorded on the run by the executor and logged here; it is
    not raised to the caller, so one failing flow never stops a heartbeat's others.
    """

    def enqueue_many(self, runs: Sequence[DataFlowRun]) -> list[tuple[DataFlowRun, Exception]]:
        """Run a heartbeat's batch one after another, now (see :func:`run_in_turn`)."""
        run_in_turn(runs)
        return []

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        scope = _request.scope
        if scope is not None and scope.defer:
            scope.runs.append(run)
            return
        execute_now(run)
