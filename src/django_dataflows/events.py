"""Send run events to the signals and to the ``CALLBACKS`` listed in settings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal
from django.utils.module_loading import import_string

from django_dataflows import signals
from django_dataflows.conf import app_settings

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun, DataFlowRunStep

logger = logging.getLogger("django_dataflows.events")

EVENTS: dict[str, Signal] = {
    "run_enqueued": signals.run_enqueued,
    "run_started": signals.run_started,
    "run_finished": signals.run_finished,
    "run_step_finished": signals.run_step_finished,
}


@lru_cache(maxsize=8)
def _load_callbacks(paths: tuple[str, ...]) -> tuple[Callable[..., Any], ...]:
    # The paths come from settings (trusted, checked by dataflows.E009), never from a row.
    return tuple(import_string(path) for path in paths)


def run_event_payload(run: DataFlowRun) -> dict[str, Any]:
    return {
        "run": run,
        "data_flow": run.data_flow,
        "flow_name": run.data_flow.name,
        "run_id": run.pk,
        "attempt": run.attempt,
        "status": run.status,
        "duration": run.duration,
    }


def emit(event: str, run: DataFlowRun, *, step: DataFlowRunStep | None = None) -> None:
    """Send ``event`` for ``run`` (and ``step``, for step events).

    A failing receiver or callback is logged, never raised.
    """
    payload = run_event_payload(run)
    if step is not None:
        payload["step"] = step
    for receiver, response in EVENTS[event].send_robust(sender=type(run.data_flow), **payload):
        if isinstance(response, Exception):
            logger.error(
                "Receiver %r of %s failed for run %s",
                receiver,
                event,
                run.pk,
                exc_info=(type(response), response, response.__traceback__),
            )
    try:
        callbacks = _load_callbacks(tuple(app_settings.CALLBACKS))
    except ImportError:
        logger.exception("Could not import DATAFLOWS['CALLBACKS']")
        return
    for callback in callbacks:
        try:
            callback(event, **payload)
        except Exception:
            logger.exception("Callback %r failed on %s for run %s", callback, event, run.pk)
