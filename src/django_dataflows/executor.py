"""``FlowExecutor``: the only code that moves a run from one status to another.

Every transition is a conditional ``UPDATE … WHERE status IN (expected)``: a late or
duplicated message can never overwrite a finished run, and a flow body runs at most once
per run record.
"""

from __future__ import annotations

import logging
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from django_dataflows.bookkeeping import (
    create_pending_run,
    give_slot_back,
    give_slots_back,
    record_outcome,
    record_outcomes,
    record_status,
)
from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import (
    FlowExited,
    FlowNotRegistered,
    FlowTimeout,
    InvalidRunState,
    OutcomeNotStored,
    PermanentFlowError,
    RunInterrupted,
    RunNotPending,
    RunOfAnotherFlow,
    UnstorableValue,
)
from django_dataflows.flows import Flow, FlowContext
from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    StepStatus,
    hand_to_backend,
    row_lock,
)
from django_dataflows.runlogs import observe_run
from django_dataflows.runtime import RunSession, close_steps, json_value, milliseconds
from django_dataflows.statements import end_run, take_pending_run
from django_dataflows.validators import validate_configuration, validate_json_object

if TYPE_CHECKING:
    from collections.abc import Iterable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger("django_dataflows.executor")


#: Exceptions that end a run as ``timed_out``. Backends add their own (Celery's soft
#: time limit) with :func:`register_timeout_exception`.
_timeout_exceptions: list[type[BaseException]] = [FlowTimeout]


def _one_statement_path() -> bool:
    """Use the worker's one-statement writes (:mod:`django_dataflows.statements`)?

    On PostgreSQL, outside a transaction: inside one, the caller's commit decides
    durability, and the ORM's statements keep to it.
    """
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def register_timeout_exception(exc_class: type[BaseException]) -> None:
    if exc_class not in _timeout_exceptions:
        _timeout_exceptions.append(exc_class)


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
        return cls._run_body(run, cls._mark_in_progress(run))

    @classmethod
    def _run_body(cls, run: DataFlowRun, session: RunSession) -> Any:
        """Call the taken run's flow and record its outcome (see :meth:`execute`)."""
        data_flow = run.data_flow
        try:
            # The run's log and cost: what the body logs and prints, its CPU and queries.
            with observe_run(run, session):
                flow = cls._instantiate(data_flow, run, session)
                result = cls._serialisable(flow.run())
                state = cls._changed_state(flow, data_flow)
        except RunInterrupted as interruption:
            session.release_unstarted()
            cls._record_interruption(run, interruption, session)
            return None
        except SystemExit as exc:
            # sys.exit() in a flow (or a server's signal handler exiting the worker) ends
            # this run, not the heartbeat or worker running a batch of them.
            session.release_unstarted()
            exited = FlowExited(exc)
            exited.__cause__ = exc  # the backtrace stored shows where the flow exited
            cls._record_failure_surely(run, exited, session)
            raise exited from exc
        except BaseException as exc:  # KeyboardInterrupt too: recorded, then re-raised
            session.release_unstarted()
            cls._record_failure_surely(run, exc, session)
            raise
        try:
            cls._record_success(run, result, state=state, session=session)
        except Exception as exc:
            # The database refused the outcome (or the flow broke the connection): the run
            # must not stay in progress until its timeout with the real error lost.
            cls._record_failure_surely(run, OutcomeNotStored(exc), session)
            raise
        return result

    @classmethod
    def execute_queued(
        cls,
        run_id: int,
        *,
        on_failure: Callable[[DataFlowRun, BaseException], object] | None = None,
    ) -> None:
        """Execute the pending run ``run_id``: what a worker does with a run's message.

        A run that no longer exists (its flow was deleted) or is no longer pending (a
        duplicated or late message, or a run cancelled or timed out meanwhile) is logged and
        skipped. If the flow fails, ``on_failure(run, exc)`` is called (a backend schedules
        its retry there) and the exception propagates, so the job system records it too.
        """
        if _one_statement_path():
            run = take_pending_run(run_id)
            if run is None:
                cls._not_taken(run_id)
                return
            # The flow row was read by the same statement, after the mark: it is current.
            session = cls._session(run, resumed=run.started_at != run.activated_at)
            emit("run_started", run)
            execute: Callable[[], Any] = partial(cls._run_body, run, session)
        else:
            try:
                run = DataFlowRun.objects.select_related("data_flow").get(pk=run_id)
            except DataFlowRun.DoesNotExist:
                cls._not_taken(run_id)
                return
            execute = partial(cls.execute, run.data_flow, run=run)
        try:
            execute()
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
        except (Exception, KeyboardInterrupt) as exc:
            # KeyboardInterrupt too: it was recorded, and the retry policy still applies.
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
            return create_pending_run(data_flow, trigger=trigger, user=user)
        if run.data_flow_id != data_flow.pk:
            raise RunOfAnotherFlow(
                f"Run {run.pk} belongs to another data flow than {data_flow.name!r}."
            )
        run.data_flow = data_flow
        return run

    @staticmethod
    def _not_taken(run_id: int) -> None:
        """Say why the run of a message was not executed (it is gone, or not pending)."""
        found = DataFlowRun.objects.filter(pk=run_id).values_list("status", "data_flow__name")
        if not found:
            logger.warning("Run %s does not exist (was its flow deleted?); nothing to do.", run_id)
            return
        [(status, name)] = found
        logger.info(
            "Run %s of %r is %s, not pending: a duplicate or late message; ignored.",
            run_id,
            name,
            status,
        )

    @classmethod
    def _mark_in_progress(cls, run: DataFlowRun) -> RunSession:
        """Take the pending run; create its declared steps' rows, or read them on resume."""
        now = timezone.now()
        resumed = run.started_at is not None  # a paused run that was resumed
        # The timeout counts from the database's clock, as the reaper's deadlines do: a
        # worker whose clock is slow cannot have its run reaped early.
        fields: dict[str, Any] = {"activated_at": Now()}
        if not resumed:
            fields["started_at"] = now  # started_at keeps the first start
        # One commit for the run, its flow's status and its step rows.
        with transaction.atomic():
            if not cls._transition(run, (RunStatus.PENDING,), RunStatus.IN_PROGRESS, **fields):
                run.refresh_from_db(fields=["status"])
                raise RunNotPending(run.pk, run.status)
            run.activated_at = now  # this process's reading of the moment just stored
            record_status(run)
            session = cls._session(run, resumed=resumed)
        # The flow starts from the state the previous successful run left.
        run.data_flow.state = (
            DataFlow.objects.filter(pk=run.data_flow_id).values_list("state", flat=True).get()
        )
        emit("run_started", run)
        return session

    @classmethod
    def _session(cls, run: DataFlowRun, *, resumed: bool) -> RunSession:
        """The taken run's session: its declared steps' rows created, or read on resume."""
        flow_class = cls._flow_class(run.data_flow)
        session = RunSession(run, tuple(flow_class.steps) if flow_class else ())
        if resumed or session.declared:  # a stale run object must not recreate rows
            session.load()
        # The default run() starts the first declared step at once.
        session.create_declared_steps(
            start_first=flow_class is not None and flow_class.run is Flow.run
        )
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
        # Rows made with objects.create() never went through full_clean(): the same checks,
        # the same messages.
        try:
            validate_json_object(data_flow.configuration)
        except ValidationError as exc:
            raise PermanentFlowError(f"configuration: {'; '.join(exc.messages)}") from exc
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
            raise UnstorableValue(
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
    def _record_failure_surely(
        cls, run: DataFlowRun, exc: BaseException, session: RunSession | None = None
    ) -> None:
        """Record ``exc`` as the run's failure, whatever writing it first runs into.

        If the write fails (the flow terminated its own database connection, or left it
        unusable), the failure is recorded again on a fresh connection, saying both errors.
        """
        try:
            cls._record_failure(run, exc, session)
        except Exception as write_error:
            logger.exception("Could not record the failure of run %s; retrying", run.pk)
            if not connection.in_atomic_block:
                connection.close()  # the next query opens a new connection
            message = (
                f"{_error_message(exc)} (recorded on a new database connection; the first "
                f"attempt failed with: {_error_message(write_error)})"
            )
            cls._record_failure(run, exc, message=message)

    @classmethod
    def _record_failure(
        cls,
        run: DataFlowRun,
        exc: BaseException,
        session: RunSession | None = None,
        *,
        message: str = "",
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
            error_message=without_nul(message) or _error_message(exc),
            error_backtrace=without_nul("".join(traceback.format_exception(exc))),
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
                run.status, run.pause_requested_at = RunStatus.PAUSED, None
                record_status(run)
        if paused:
            for name, value in fields.items():
                setattr(run, name, value)
        return bool(paused)

    # -- transitions outside execute() ----------------------------------------------

    @classmethod
    def record_lost_process(cls, run: DataFlowRun, exc: BaseException, *, timed_out: bool) -> bool:
        """End a run whose process died under it (a Celery pool process was killed).

        Called by the process that saw it die (the worker's parent). ``timed_out`` when a
        hard time limit killed it: the run ends ``timed_out``, else ``failed``. ``False`` if
        the run had already ended (its outcome was recorded before the process went).
        """
        status = RunStatus.TIMED_OUT if timed_out else RunStatus.FAILED
        reason = "was killed at its hard time limit" if timed_out else "was lost"
        message = f"The worker process running the flow {reason}: {_error_message(exc)}"
        done = cls._finish(
            run,
            (RunStatus.IN_PROGRESS,),
            status,
            close_steps=True,
            ended_at=timezone.now(),
            error_message=message,
        )
        if done:
            logger.error("Data flow %r run %s: %s", run.data_flow.name, run.pk, message)
        return done

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
                give_slot_back(run, slot)
        return done

    @classmethod
    def record_not_tried(cls, runs: list[DataFlowRun], exc: BaseException) -> int:
        """Give back, in a few statements whatever their number, runs a batch never tried.

        As :meth:`record_enqueue_failure` does for one run: each ends ``failed`` with
        ``exc`` as its reason, lets go of its slot, and its flow is due again at that slot.
        Returns how many were still pending.
        """
        now = timezone.now()
        message = f"Could not enqueue the run: {exc} (its schedule slot stays due)"
        with transaction.atomic():
            pending = set(
                row_lock(
                    DataFlowRun.objects.filter(
                        pk__in=[run.pk for run in runs], status=RunStatus.PENDING
                    )
                ).values_list("pk", flat=True)
            )
            given_back = [run for run in runs if run.pk in pending]
            DataFlowRun.objects.filter(pk__in=pending).update(
                status=RunStatus.FAILED, ended_at=now, error_message=message, scheduled_for=None
            )
            give_slots_back(given_back)
            for run in given_back:
                run.status, run.ended_at, run.error_message = RunStatus.FAILED, now, message
                run.scheduled_for = None
        cls._after_bulk_finish(given_back)
        return len(given_back)

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
        run.refresh_from_db()  # its started_at, for the duration of a paused run
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
            record_status(run)
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
        """End runs in progress past their timeout (``DataFlowRun.objects.stuck()``).

        A stuck run would otherwise block its flow forever: it ends ``timed_out``, or
        ``cancelled`` if it was asked to cancel (its body never reached a checkpoint; its
        worker was probably lost). Paused runs never time out, and a run still pending is
        not stuck but unclaimed (:meth:`take_back_unclaimed_runs`). Returns how many runs
        were ended.
        """
        now = now or timezone.now()
        by_timeout: dict[int, list[int]] = defaultdict(list)
        # effective_timeout is stuck()'s annotation, which the type checker cannot see.
        stuck = DataFlowRun.objects.stuck(now).values_list("pk", "effective_timeout")  # type: ignore[misc]
        for pk, timeout in stuck:
            by_timeout[timeout].append(pk)
        count = 0
        for timeout, pks in by_timeout.items():
            in_progress = DataFlowRun.objects.filter(pk__in=pks, status=RunStatus.IN_PROGRESS)
            count += in_progress.filter(cancel_requested_at__isnull=False).update(
                status=RunStatus.CANCELLED,
                ended_at=now,
                error_message=f"Cancelled: no checkpoint was reached within the "
                f"{timeout}-second timeout; its worker was probably lost.",
            )
            count += in_progress.update(
                status=RunStatus.TIMED_OUT,
                ended_at=now,
                error_message=f"Timed out: still in progress after the {timeout}-second "
                "timeout; its worker was probably lost.",
            )
        if count:
            cls._after_bulk_finish(
                DataFlowRun.objects.filter(
                    pk__in=[pk for pks in by_timeout.values() for pk in pks],
                    status__in=(RunStatus.TIMED_OUT, RunStatus.CANCELLED),
                    ended_at=now,
                ).select_related("data_flow")
            )
        return count

    @classmethod
    def take_back_unclaimed_runs(cls, now: datetime | None = None) -> Redelivery:
        """Take back pending runs no worker started within ``PICKUP_TIMEOUT``.

        The database is the source of truth and the broker only a transport: a run whose
        message was lost (a broker restarted empty), or whose in-process batch died, is
        still ``pending`` here. Each is returned to be handed to the backend again, the same
        run, so its conditional start still lets one body run, with ``redeliveries`` + 1 and
        its pickup deadline restarted. A run already redelivered ``MAX_REDELIVERIES`` times
        ends ``failed`` ("never picked up") instead. Row locks (skipping locked rows) keep
        two heartbeats from taking back the same run.
        """
        now = now or timezone.now()
        limit = app_settings.MAX_REDELIVERIES
        features = connection.features
        if not DataFlowRun.objects.unclaimed(now).exists():  # the usual case: one query
            return Redelivery(runs=[], never_picked_up=0)
        with transaction.atomic():
            unclaimed = list(
                DataFlowRun.objects.unclaimed(now)
                .select_related("data_flow")
                .select_for_update(
                    skip_locked=True, no_key=features.has_select_for_no_key_update, of=("self",)
                )
            )
            again = [run for run in unclaimed if run.redeliveries < limit]
            given_up = [run for run in unclaimed if run.redeliveries >= limit]
            if again:
                DataFlowRun.objects.filter(
                    pk__in=[run.pk for run in again], status=RunStatus.PENDING
                ).update(redeliveries=F("redeliveries") + 1, activated_at=now)
                for run in again:
                    run.redeliveries += 1
                    run.activated_at = now
            for run in given_up:
                DataFlowRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
                    status=RunStatus.FAILED, ended_at=now, error_message=_never_picked_up(run)
                )
        if given_up:
            for run in given_up:
                run.status, run.ended_at = RunStatus.FAILED, now
                run.error_message = _never_picked_up(run)
                logger.error("Run %s of %r: %s", run.pk, run.data_flow.name, run.error_message)
            cls._after_bulk_finish(given_up)
        for run in again:
            logger.warning(
                "Run %s of %r was not started within %s seconds; handing it to the backend "
                "again (redelivery %s of %s).",
                run.pk,
                run.data_flow.name,
                f"{app_settings.PICKUP_TIMEOUT:g}",
                run.redeliveries,
                limit,
            )
        return Redelivery(runs=again, never_picked_up=len(given_up))

    @staticmethod
    def renew_pending(runs: Iterable[DataFlowRun]) -> None:
        """Show that ``runs`` still wait their turn in a live process (an in-process batch).

        Restarts their pickup deadline, so that a heartbeat never takes back a run that a
        living batch will still run; a batch whose process died stops renewing, and its
        waiting runs are taken back ``PICKUP_TIMEOUT`` later.
        """
        DataFlowRun.objects.filter(
            pk__in=[run.pk for run in runs], status=RunStatus.PENDING
        ).update(activated_at=Now())

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
        if _one_statement_path() and not close_steps:
            started_at = run.started_at if last_run_at else None
            done = end_run(
                run,
                expected,
                status,
                fields,
                last_run_at=started_at,
                flow_fields=flow_fields or {},
            )
            if done:
                run.status = status
                for name, value in fields.items():
                    setattr(run, name, value)
                run.data_flow.last_run_status = status
                if started_at is not None:
                    run.data_flow.last_run_at = started_at
                for name, value in (flow_fields or {}).items():
                    setattr(run.data_flow, name, value)
                emit("run_finished", run)
            return done
        with transaction.atomic():
            done = cls._transition(run, expected, status, **fields)
            if done:
                record_outcome(run, last_run_at=last_run_at, **(flow_fields or {}))
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
    def _after_bulk_finish(runs: Iterable[DataFlowRun]) -> None:
        by_status: dict[str, list[DataFlowRun]] = defaultdict(list)
        for run in runs:
            by_status[run.status].append(run)
        for status, finished in by_status.items():
            record_outcomes(finished, status)
            _close_unfinished_steps([run.pk for run in finished], status)
        for run in [run for finished in by_status.values() for run in finished]:
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


def without_nul(text: str) -> str:
    """``text`` with each NUL character written as ``\\x00`` (PostgreSQL refuses NUL)."""
    return text.replace("\x00", "\\x00")


def _error_message(exc: BaseException) -> str:
    return without_nul(str(exc).strip()) or type(exc).__name__


@dataclass
class Redelivery:
    """What :meth:`FlowExecutor.take_back_unclaimed_runs` found."""

    #: Pending runs to hand to the backend again.
    runs: list[DataFlowRun]
    #: Runs ended ``failed`` because they were redelivered ``MAX_REDELIVERIES`` times.
    never_picked_up: int


def _never_picked_up(run: DataFlowRun) -> str:
    return (
        f"Never picked up: no worker started the run within "
        f"{app_settings.PICKUP_TIMEOUT:g} seconds of its hand-over, "
        f"{run.redeliveries + 1} times ({run.redeliveries} redeliveries)."
    )
