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


class FlowHasActiveRun(DataFlowError):
    """A flow cannot be deleted while it has an active run (the API answers 409)."""

    def __init__(self, data_flow_names: list[str]) -> None:
        self.data_flow_names = data_flow_names
        names = ", ".join(repr(name) for name in data_flow_names)
        which = "Data flow" if len(data_flow_names) == 1 else "Data flows"
        super().__init__(
            f"{which} {names} has an active run; cancel it or wait for it to finish before "
            "deleting the flow."
            if len(data_flow_names) == 1
            else f"{which} {names} have active runs; cancel them or wait for them to finish "
            "before deleting the flows."
        )


class RunNotPending(DataFlowError):
    """The run was asked to execute but is no longer pending (a duplicate or late delivery)."""

    def __init__(self, run_id: int, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"Run {run_id} is {status}, not pending; it will not be executed again.")


class EnqueueFailed(DataFlowError):
    """The backend could not accept the run (for example, the broker is down)."""


class EnqueueNotTried(EnqueueFailed):
    """The run was not handed over: the backend refused another run of its batch before it.

    Once a broker has failed (down, or frozen until a timeout), trying each remaining run
    would only multiply the wait; their slots are given back at once instead.
    """

    def __init__(self, refused_run_id: int, reason: BaseException) -> None:
        self.refused_run_id = refused_run_id
        super().__init__(
            f"not tried, because the backend refused run {refused_run_id} of the same batch "
            f"just before: {reason}"
        )


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


class FlowExited(DataFlowError):
    """The flow raised ``SystemExit``: its run failed, and the process running it goes on.

    ``FlowExecutor.execute()`` raises it (from the ``SystemExit``) after recording the run
    *failed*, so that a ``sys.exit()`` in one flow never ends a heartbeat or a worker.
    """

    def __init__(self, exit: SystemExit) -> None:
        self.code = exit.code
        super().__init__(
            f"SystemExit({exit.code!r}): the flow called sys.exit(), or its process was "
            "told to exit while the flow ran."
        )


class OutcomeNotStored(DataFlowError):
    """The flow finished, but the database refused to store its outcome."""

    def __init__(self, error: Exception) -> None:
        super().__init__(
            f"The run's outcome could not be stored: {str(error).strip() or type(error).__name__}"
        )


class FlowTimeout(DataFlowError):
    """Raise it from ``Flow.run()``: the run went past its timeout and ends ``timed_out``."""


class RunOfAnotherFlow(DataFlowError, ValueError):
    """``FlowExecutor.execute(data_flow, run=run)`` was given a run of another flow."""


class UnstorableValue(DataFlowError, TypeError):
    """A flow's result, step result or ``state`` cannot be stored as JSON."""


class MalformedForwardedFor(DataFlowError, ValueError):
    """A trusted proxy sent an ``X-Forwarded-For`` entry that is not an IP address."""
