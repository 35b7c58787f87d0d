"""Exceptions raised by django-dataflows."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class DataFlowError(Exception):
    """Base class of every error this app raises on purpose."""


class DataFlowsImproperlyConfigured(DataFlowError, ImproperlyConfigured):
    """The ``DATAFLOWS`` setting, or something it names, is wrong."""


class FlowNotRegistered(DataFlowError, LookupError):
    """A DataFlow names a flow path that is not a registered :class:`~django_dataflows.Flow`."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"Flow {path!r} is not registered. Only subclasses of django_dataflows.Flow "
            "defined in an installed app's flows module (or a module listed in "
            "DATAFLOWS['FLOW_MODULES']) can be run."
        )


class RunAlreadyActive(DataFlowError):
    """The flow already has a pending or in-progress run, so no new run was started."""

    def __init__(self, data_flow_name: str) -> None:
        self.data_flow_name = data_flow_name
        super().__init__(
            f"Data flow {data_flow_name!r} already has a pending or in-progress run; "
            "wait for it to finish (or cancel it) before starting another."
        )


class RunNotPending(DataFlowError):
    """The run was asked to execute but is no longer pending (a duplicate or late delivery)."""

    def __init__(self, run_id: int, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"Run {run_id} is {status}, not pending; it will not be executed again.")


class EnqueueFailed(DataFlowError):
    """The backend could not accept the run (for example, the broker is down)."""


class PermanentFlowError(DataFlowError):
    """Raise from ``Flow.run()`` for an error that retrying cannot fix: the run is not retried."""


class InvalidRunState(DataFlowError):
    """A run-control call that the run's current state forbids (the API answers 409).

    ``run_id``, ``status`` (the run's status when the call was refused) and ``action``
    (``"cancel"``, ``"pause"``, ``"resume"`` or ``"retry"``) say what was refused.
    """

    def __init__(self, run_id: int, status: str, action: str, reason: str) -> None:
        self.run_id = run_id
        self.status = status
        self.action = action
        super().__init__(f"Cannot {action} run {run_id}: {reason}")


class RunInterrupted(BaseException):
    """Raised by ``Flow.checkpoint()`` when the run has been asked to cancel or pause.

    A ``BaseException``, so that a flow's ``except Exception:`` cannot swallow it. The
    executor turns it into the state change (``cancelled`` or ``paused``); ``action`` says
    which: ``"cancel"``, ``"pause"``, or ``"lost"`` when the run was ended meanwhile (for
    example timed out by the heartbeat), so the body must stop.
    """

    def __init__(self, run_id: int | None, action: str) -> None:
        self.run_id = run_id
        self.action = action
        super().__init__(f"Run {run_id} was interrupted: {action} requested.")
