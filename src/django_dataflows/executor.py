"""``FlowExecutor``: the only code that moves a run from one status to another.

Every transition is a conditional ``UPDATE … WHERE status IN (expected)``: a late or
duplicated message can never overwrite a finished run, and a flow body runs at most once
per run record.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from contextlib import nullcontext
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from django_dataflows.events import emit
from django_dataflows.exceptions import (
    DataFlowError,
    FlowNotRegistered,
    InvalidRunState,
    PermanentFlowError,
    RunInterrupted,
    RunNotPending,
)
from django_dataflows.flows import Flow, FlowContext
from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    StepStatus,
    hand_to_backend,
)
from django_dataflows.runtime import RunSession, close_steps, json_value, milliseconds
from django_dataflows.validators import validate_configuration

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger("django_dataflows.executor")


class FlowTimeout(DataFlowError):
    """The run went past its timeout; it ends ``timed_out`` rather than ``failed``."""


#: Exceptions that end a run as ``timed_out``. Backends add their own (Celery's soft
#: time limit) with :func:`register_timeout_exception`.
_timeout_exceptions: list[type[BaseException]] = [FlowTimeout]


def register_timeout_exception(exc_class: type[BaseException]) -> None:
    if exc_class not in _timeout_exceptions:
        _timeout_exceptions.append(exc_class)


def _flows_without_active_run(pks: list[int]) -> QuerySet[DataFlow]:
    """The flows among ``pks`` with no active run.

    A finished run's outcome is written to its flow only if no newer run has started
    meanwhile (on another server), whose state the flow shows instead.
    """
    active = DataFlowRun.objects.active().filter(data_flow=OuterRef("pk"))
    return DataFlow.objects.filter(pk__in=pks).exclude(Exists(active))


class FlowExecutor:
    """Run a data flow and record what happened; steer runs (cancel, pause, resume, retry).

    ``FlowExecutor.execute(data_flow)`` is the single entry point: it records a run,
    instantiates the flow with the DataFlow's configuration, calls ``run()``, stores the
    outcome on the run and the flow, and returns the flow's result. On failure it stores
    the message and backtrace and re-raises the original exception. A run stopped at a
    checkpoint (cancelled or paused) returns ``None``.
    """

    @classmethod
    def execute(
        cls,
        data_flow: DataFlow,
        run: DataFlowRun | None = None,
        *,
        trigger: str = RunTrigger.MANUAL,
        user: AbstractBaseUser | AnonymousUser | None = None,
    ) -> Any:
        """Execute ``data_flow`` now, in this process, and return the flow's result.

        With ``run`` (a pending run created by ``trigger_run``), that run is executed; a run
        that is no longer pending raises ``RunNotPending`` and the flow is not called.
        Without it, a new run is recorded first (``RunAlreadyActive`` if one is active).
        A run that reaches a checkpoint after a cancel or pause request ends ``cancelled``
        or ``paused`` and this returns ``None``: nothing failed, so nothing is retried.
        """
        run = cls._take_run(data_flow, run, trigger, user)
        session = cls._mark_in_progress(run)
        try:
            flow = cls._instantiate(data_flow, run, session)
            result = cls._serialisable(flow.run())
            state = cls._changed_state(flow, data_flow)
        except RunInterrupted as interruption:
            session.release_unstarted()
            cls._record_interruption(run, interruption, session)
            return None
        except BaseException as exc:
            session.release_unstarted()
            cls._record_failure(run, exc, session)
            raise
        cls._record_success(run, result, state=state, session=session)
        return result

    @classmethod
    def execute_queued(
        cls,
        run_id: int,
        *,
        on_failure: Callable[[DataFlowRun, Exception], object] | None = None,
    ) -> None:
        """Execute the pending run ``run_id``: what a worker does with a run's message.

        A run that no longer exists (its flow was deleted) or is no longer pending (a
        duplicated or late message, or a run cancelled or timed out meanwhile) is logged and
        skipped. If the flow fails, ``on_failure(run, exc)`` is called (a backend schedules
        its retry there) and the exception propagates, so the job system records it too.
        """
        try:
            run = DataFlowRun.objects.select_related("data_flow").get(pk=run_id)
        except DataFlowRun.DoesNotExist:
            logger.warning("Run %s does not exist (was its flow deleted?); nothing to do.", run_id)
            return
        try:
            cls.execute(run.data_flow, run=run)
        except RunNotPending as exc:
            if exc.run_id != run.pk:  # raised by the flow itself, about another run
                if on_failure is not None:
                    on_failure(run, exc)
                raise
            logger.info(
                "Run %s of %r is %s, not pending: a duplicate or late message; ignored.",
                run.pk,
                run.data_flow.name,
                exc.status,
            )
        except Exception as exc:
            if on_failure is not None:
                on_failure(run, exc)
            raise

    # -- steps of execute() ---------------------------------------------------------

    @staticmethod
    def _take_run(
        data_flow: DataFlow,
        run: DataFlowRun | None,
        trigger: str,
        user: AbstractBaseUser | AnonymousUser | None,
    ) -> DataFlowRun:
        if run is None:
            return data_flow.create_pending_run(trigger=trigger, user=user)
        if run.data_flow_id != data_flow.pk:
            raise ValueError(f"Run {run.pk} belongs to another data flow than {data_flow.name!r}.")
        run.data_flow = data_flow
        return run

    @classmethod
    def _mark_in_progress(cls, run: DataFlowRun) -> RunSession:
        """Take the pending run; create its declared steps' rows, or read them on resume."""
        now = timezone.now()
        resumed = run.started_at is not None  # a paused run that was resumed
        fields: dict[str, Any] = {"activated_at": now}
        if not resumed:
            fields["started_at"] = now  # started_at keeps the first start
        flow_class = cls._flow_class(run.data_flow)
        session = RunSession(run, tuple(flow_class.steps) if flow_class else ())
        # One commit for the run and its step rows; a run without steps writes one row.
        with transaction.atomic() if session.declared and not resumed else nullcontext():
            if not cls._transition(run, (RunStatus.PENDING,), RunStatus.IN_PROGRESS, **fields):
                run.refresh_from_db(fields=["status"])
                raise RunNotPending(run.pk, run.status)
            if resumed or session.declared:  # a stale run object must not recreate rows
                session.load()
            # The default run() starts the first declared step at once.
            session.create_declared_steps(
                start_first=flow_class is not None and flow_class.run is Flow.run
            )
        # The flow starts from the state the previous successful run left.
        run.data_flow.state = (
            DataFlow.objects.filter(pk=run.data_flow_id).values_list("state", flat=True).get()
        )
        emit("run_started", run)
        return session

    @staticmethod
    def _flow_class(data_flow: DataFlow) -> type[Flow] | None:
        try:
            return data_flow.flow_class
        except FlowNotRegistered:
            return None  # the run fails in _instantiate(), with that error

    @staticmethod
    def _instantiate(data_flow: DataFlow, run: DataFlowRun, session: RunSession) -> Flow:
        flow_class = data_flow.flow_class  # FlowNotRegistered for anything unregistered
        # Rows made with objects.create() never went through full_clean().
        try:
            validate_configuration(flow_class, data_flow.configuration)
        except ValidationError as exc:
            raise PermanentFlowError(
                "The configuration does not match the flow's configuration_schema: "
                + "; ".join(exc.messages)
            ) from exc
        context = FlowContext(data_flow, run, recorder=session)
        return flow_class(data_flow.configuration, context=context)

    @staticmethod
    def _serialisable(result: Any) -> Any:
        return json_value(result, "The flow returned a result that")

    @staticmethod
    def _changed_state(flow: Flow, data_flow: DataFlow) -> dict[str, Any] | None:
        """The flow's new ``state`` to save with its success, or ``None`` if unchanged."""
        state = flow.state
        if not isinstance(state, dict):
            raise TypeError(
                f"self.state must be a JSON object (a dict), not {type(state).__name__}."
            )
        json_value(state, "self.state")
        return None if state == data_flow.state else state

    @classmethod
    def _record_success(
        cls,
        run: DataFlowRun,
        result: Any,
        *,
        state: dict[str, Any] | None = None,
        session: RunSession | None = None,
    ) -> None:
        flow_fields = {} if state is None else {"state": state}
        if not cls._finish(
            run,
            (RunStatus.IN_PROGRESS,),
            RunStatus.SUCCESS,
            flow_fields=flow_fields,
            ended_at=timezone.now(),
            result=result,
            **(session.final_fields() if session else {}),
        ):
            run.refresh_from_db(fields=["status"])
            logger.warning("Run %s finished after it was marked %s; kept.", run.pk, run.status)

    @classmethod
    def _record_failure(
        cls, run: DataFlowRun, exc: BaseException, session: RunSession | None = None
    ) -> None:
        status = (
            RunStatus.TIMED_OUT if isinstance(exc, tuple(_timeout_exceptions)) else RunStatus.FAILED
        )
        if cls._finish(
            run,
            (RunStatus.IN_PROGRESS,),
            status,
            close_steps=session is not None and session.has_steps,
            ended_at=timezone.now(),
            error_message=str(exc) or type(exc).__name__,
            error_backtrace="".join(traceback.format_exception(exc)),
            **(session.final_fields() if session else {}),
        ):
            logger.error(
                "Data flow %r run %s %s: %s", run.data_flow.name, run.pk, status.label, exc
            )

    @classmethod
    def _record_interruption(
        cls, run: DataFlowRun, interruption: RunInterrupted, session: RunSession
    ) -> None:
        """The body stopped at a checkpoint: the run becomes ``paused`` or ``cancelled``."""
        extra = session.final_fields()
        if interruption.action == "pause" and cls._pause_now(run, **extra):
            logger.info("Data flow %r run %s paused.", run.data_flow.name, run.pk)
            return
        # Cancelled, or asked to pause and then to cancel before the pause took effect.
        if cls._finish(
            run,
            (RunStatus.IN_PROGRESS,),
            RunStatus.CANCELLED,
            close_steps=True,
            ended_at=timezone.now(),
            error_message=CANCELLED_AT_CHECKPOINT,
            **extra,
        ):
            logger.info("Data flow %r run %s cancelled.", run.data_flow.name, run.pk)
        else:  # the run was ended meanwhile (timed out by a heartbeat): keep that
            run.refresh_from_db(fields=["status"])
            logger.warning("Run %s stopped at a checkpoint; it is %s.", run.pk, run.status)

    @classmethod
    def _pause_now(cls, run: DataFlowRun, **fields: Any) -> bool:
        """in_progress → paused, unless a cancel was requested meanwhile (then it wins)."""
        with transaction.atomic():
            paused = DataFlowRun.objects.filter(
                pk=run.pk, status=RunStatus.IN_PROGRESS, cancel_requested_at__isnull=True
            ).update(status=RunStatus.PAUSED, pause_requested_at=None, **fields)
            if paused:
                DataFlow.objects.filter(pk=run.data_flow_id).update(
                    last_run_status=RunStatus.PAUSED
                )
        if paused:
            run.status, run.pause_requested_at = RunStatus.PAUSED, None
            run.data_flow.last_run_status = RunStatus.PAUSED
            for name, value in fields.items():
                setattr(run, name, value)
        return bool(paused)

    # -- transitions outside execute() ----------------------------------------------

    @classmethod
    def record_enqueue_failure(cls, run: DataFlowRun, exc: BaseException) -> bool:
        """Mark a pending run the backend refused as ``failed``; its slot stays due.

        Nothing ran, so a scheduled run gives its slot back: the flow's ``next_run_at``
        returns to the slot and the failed run lets go of it (``scheduled_for`` is cleared,
        its error message says which slot), so the next heartbeat claims it again. A
        manual run leaves the schedule as it was.
        """
        slot = run.scheduled_for
        message = f"Could not enqueue the run: {exc}"
        if slot is not None:
            message += f" (schedule slot {slot.isoformat()} stays due)"
        with transaction.atomic():
            done = cls._finish(
                run,
                (RunStatus.PENDING,),
                RunStatus.FAILED,
                last_run_at=False,
                ended_at=timezone.now(),
                error_message=message,
                error_backtrace="".join(traceback.format_exception(exc)),
                scheduled_for=None,
            )
            if done and slot is not None:
                DataFlow.objects.filter(pk=run.data_flow_id, next_run_at__gt=slot).update(
                    next_run_at=slot
                )
        return done

    @classmethod
    def record_enqueued(cls, run: DataFlowRun, *, task_id: str = "", queue: str = "") -> None:
        """Store the backend's bookkeeping for a run it accepted."""
        fields = {"task_id": task_id, "queue": queue or run.queue}
        DataFlowRun.objects.filter(pk=run.pk).update(**fields)
        run.task_id, run.queue = fields["task_id"], fields["queue"]

    # -- run control ----------------------------------------------------------------

    @classmethod
    def cancel(cls, run: DataFlowRun, reason: str = "Cancelled.") -> DataFlowRun:
        """Cancel ``run`` and return it, up to date.

        A pending or paused run ends ``cancelled`` at once. An in-progress run is asked to
        stop (``cancel_requested_at``): it ends ``cancelled`` at its next checkpoint, and
        keeps its flow's active slot until then, so two bodies of one flow never overlap.
        ``InvalidRunState`` if the run has finished or a cancel was already requested.
        """
        for _attempt in range(3):  # the run may move on between the two conditional updates
            now = timezone.now()
            if cls._finish(
                run,
                (RunStatus.PENDING, RunStatus.PAUSED),
                RunStatus.CANCELLED,
                last_run_at=False,
                close_steps=True,
                ended_at=now,
                error_message=reason,
                cancel_requested_at=now,
            ):
                break
            if cls._request(run, "cancel_requested_at", now):
                break
            previous = run.status
            run.refresh_from_db()
            if run.status == previous or run.status not in ACTIVE:
                raise cls._refusal(run, "cancel")
        else:  # pragma: no cover - three state changes in a row between our updates
            raise cls._refusal(run, "cancel")
        run.refresh_from_db()
        return run

    @classmethod
    def pause(cls, run: DataFlowRun) -> DataFlowRun:
        """Ask the in-progress ``run`` to pause at its next checkpoint; return it, up to date.

        It then becomes ``paused``: still active (the heartbeat skips its flow), never timed
        out, and continued by :meth:`resume`. ``InvalidRunState`` for a run that is not in
        progress, or that was already asked to pause or cancel.
        """
        if not DataFlowRun.objects.filter(
            pk=run.pk,
            status=RunStatus.IN_PROGRESS,
            pause_requested_at__isnull=True,
            cancel_requested_at__isnull=True,
        ).update(pause_requested_at=timezone.now()):
            run.refresh_from_db()
            raise cls._refusal(run, "pause")
        run.refresh_from_db()
        return run

    @classmethod
    def resume(cls, run: DataFlowRun) -> DataFlowRun:
        """Continue the paused ``run``: it becomes ``pending`` and goes to the backend again.

        The executor then skips the declared steps that already succeeded, and the flow
        gets the same input and the stored results of those steps. Returns the run, up to
        date (with the in-process backend it has run by then). ``InvalidRunState`` unless
        the run is paused; ``EnqueueFailed`` if the backend refused it.
        """
        with transaction.atomic():
            if not cls._transition(
                run,
                (RunStatus.PAUSED,),
                RunStatus.PENDING,
                activated_at=timezone.now(),
                pause_requested_at=None,
            ):
                run.refresh_from_db()
                raise cls._refusal(run, "resume")
            DataFlow.objects.filter(pk=run.data_flow_id).update(
                last_run_status=RunStatus.IN_PROGRESS
            )
        run.refresh_from_db()
        hand_to_backend(run)
        if not transaction.get_connection().in_atomic_block:
            run.refresh_from_db()
        return run

    @classmethod
    def retry(
        cls,
        run: DataFlowRun,
        *,
        user: AbstractBaseUser | AnonymousUser | None = None,
    ) -> DataFlowRun:
        """Start a new run like the ``failed``, ``timed_out`` or ``cancelled`` ``run``.

        The new run (trigger ``retry``, the same input, ``attempt + 1``) is returned. It is
        refused like any start while the flow has an active run (``RunAlreadyActive``);
        ``InvalidRunState`` for a run that is active or succeeded.
        """
        run.refresh_from_db()
        if run.status not in RETRYABLE:
            raise cls._refusal(run, "retry")
        return run.data_flow.trigger_run(
            trigger=RunTrigger.RETRY, user=user, input=run.input, attempt=run.attempt + 1
        )

    @staticmethod
    def _request(run: DataFlowRun, field: str, now: datetime) -> bool:
        """Set the request ``field`` on the in-progress run, once: a conditional update."""
        return bool(
            DataFlowRun.objects.filter(
                pk=run.pk, status=RunStatus.IN_PROGRESS, **{f"{field}__isnull": True}
            ).update(**{field: now})
        )

    @staticmethod
    def _refusal(run: DataFlowRun, action: str) -> InvalidRunState:
        """The ``InvalidRunState`` saying why ``action`` cannot apply to ``run`` now."""
        status = run.status
        if action == "cancel" and status == RunStatus.IN_PROGRESS:
            reason = "a cancel was already requested; it ends at its next checkpoint."
        elif action == "pause" and status == RunStatus.IN_PROGRESS:
            asked = "cancel" if run.cancel_requested_at else "pause"
            reason = f"a {asked} was already requested; it takes effect at its next checkpoint."
        else:
            allowed = {
                "cancel": "pending, in_progress or paused",
                "pause": "in_progress",
                "resume": "paused",
                "retry": "failed, timed_out or cancelled",
            }[action]
            reason = f"it is {status}, not {allowed}."
        return InvalidRunState(run.pk, status, action, reason)

    @classmethod
    def time_out_stuck_runs(cls, now: datetime | None = None) -> int:
        """End runs past their timeout (``DataFlowRun.objects.stuck()``) as ``timed_out``.

        Either kind of stuck run would otherwise block its flow forever. An in-progress run
        that was asked to cancel ends ``cancelled`` instead: its body never reached a
        checkpoint (its worker was probably lost). Paused runs never time out. Returns how
        many runs were ended.
        """
        now = now or timezone.now()
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        for stuck in DataFlowRun.objects.stuck(now):
            groups[(stuck.status, stuck.timeout)].append(stuck.pk)
        count = 0
        for (status, timeout), pks in groups.items():
            if status == RunStatus.IN_PROGRESS:
                count += DataFlowRun.objects.filter(
                    pk__in=pks, status=status, cancel_requested_at__isnull=False
                ).update(
                    status=RunStatus.CANCELLED,
                    ended_at=now,
                    error_message=f"Cancelled: no checkpoint was reached within the "
                    f"{timeout}-second timeout; its worker was probably lost.",
                )
            message = (
                f"Timed out: still in progress after the {timeout}-second timeout; "
                "its worker was probably lost."
                if status == RunStatus.IN_PROGRESS
                else f"Timed out: no worker picked the run up within {timeout} seconds; "
                "the queue message was probably lost."
            )
            count += DataFlowRun.objects.filter(pk__in=pks, status=status).update(
                status=RunStatus.TIMED_OUT, ended_at=now, error_message=message
            )
        if count:
            cls._after_bulk_finish(
                DataFlowRun.objects.filter(
                    pk__in=[pk for pks in groups.values() for pk in pks],
                    status__in=(RunStatus.TIMED_OUT, RunStatus.CANCELLED),
                    ended_at=now,
                ).select_related("data_flow")
            )
        return count

    # -- helpers --------------------------------------------------------------------

    @classmethod
    def _finish(
        cls,
        run: DataFlowRun,
        expected: tuple[str, ...],
        status: str,
        *,
        last_run_at: bool = True,
        flow_fields: dict[str, Any] | None = None,
        close_steps: bool = False,
        **fields: Any,
    ) -> bool:
        """End ``run`` as ``status`` if it is still in ``expected``; tell its flow; signal.

        The run, its flow (with ``flow_fields``, such as the flow's new ``state``) and,
        with ``close_steps``, its unfinished steps change in one transaction (one commit,
        never one without the other); ``run_finished`` is sent after it. ``False`` if the
        run had moved on. The run's ``duration_ms`` is stored with its end.
        """
        if "ended_at" in fields:
            fields["duration_ms"] = milliseconds(run.started_at, fields["ended_at"])
        with transaction.atomic():
            done = cls._transition(run, expected, status, **fields)
            if done:
                cls._update_flow(run, last_run_at=last_run_at, **(flow_fields or {}))
                if close_steps:
                    _close_unfinished_steps([run.pk], status)
        if done:
            emit("run_finished", run)
        return done

    @staticmethod
    def _transition(
        run: DataFlowRun, expected: tuple[str, ...], status: str, **fields: Any
    ) -> bool:
        """Move ``run`` to ``status`` only if it is still in one of ``expected``."""
        updated = DataFlowRun.objects.filter(pk=run.pk, status__in=expected).update(
            status=status, **fields
        )
        if updated:
            run.status = status
            for name, value in fields.items():
                setattr(run, name, value)
        return bool(updated)

    @staticmethod
    def _update_flow(run: DataFlowRun, *, last_run_at: bool = True, **extra: Any) -> None:
        fields: dict[str, Any] = {"last_run_status": run.status, **extra}
        if last_run_at and run.started_at is not None:
            fields["last_run_at"] = run.started_at
        _flows_without_active_run([run.data_flow_id]).update(**fields)
        for name, value in fields.items():
            setattr(run.data_flow, name, value)

    @staticmethod
    def _after_bulk_finish(runs: Iterable[DataFlowRun]) -> None:
        by_status: dict[str, list[DataFlowRun]] = defaultdict(list)
        for run in runs:
            by_status[run.status].append(run)
        for status, finished in by_status.items():
            _flows_without_active_run([run.data_flow_id for run in finished]).update(
                last_run_status=status
            )
            _close_unfinished_steps([run.pk for run in finished], status)
        for run in [run for finished in by_status.values() for run in finished]:
            run.data_flow.last_run_status = run.status
            if run.started_at is not None and run.ended_at is not None:
                run.duration_ms = milliseconds(run.started_at, run.ended_at)
                DataFlowRun.objects.filter(pk=run.pk).update(duration_ms=run.duration_ms)
            emit("run_finished", run)


#: What a run cancelled at a checkpoint says.
CANCELLED_AT_CHECKPOINT = "Cancelled: stopped at a checkpoint."
#: Run statuses that can be retried.
RETRYABLE = (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)
ACTIVE = (RunStatus.PENDING, RunStatus.IN_PROGRESS, RunStatus.PAUSED)
#: What an unfinished step of a run that ended with this status becomes.
_STEP_STATUS_FOR_RUN: dict[str, str] = {
    RunStatus.CANCELLED: StepStatus.CANCELLED,
    RunStatus.FAILED: StepStatus.FAILED,
    RunStatus.TIMED_OUT: StepStatus.FAILED,
}


def _close_unfinished_steps(run_ids: list[int], run_status: str) -> None:
    """A run ended: its running step ends like the run; the steps never reached are skipped."""
    step_status = _STEP_STATUS_FOR_RUN.get(run_status, StepStatus.FAILED)
    message = "" if step_status == StepStatus.CANCELLED else f"The run ended {run_status}."
    close_steps(run_ids, step_status, message)
