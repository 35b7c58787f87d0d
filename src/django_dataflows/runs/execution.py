"""``RunExecutor``: runs a flow's body, records runs that end without one, steers runs.

What a worker and the heartbeat call (the backends and :mod:`django_dataflows.scheduling`
sit above it); :class:`django_dataflows.executor.FlowExecutor`, the public service, adds
what needs a backend (resume, retry).

Every change of a run's status is a transition of :mod:`django_dataflows.runs.transitions`
(a conditional ``UPDATE … WHERE status IN (sources)``): a late or duplicated message can
never overwrite a finished run, and a flow body runs at most once per run record.
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

from django_dataflows.clock import database_now
from django_dataflows.conf import app_settings
from django_dataflows.events import emit
from django_dataflows.exceptions import (
    FlowExited,
    FlowNotRegistered,
    FlowTimeout,
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
)
from django_dataflows.runlogs import observe_run
from django_dataflows.runs.bookkeeping import create_pending_run, give_back
from django_dataflows.runs.runtime import RunSession, json_value
from django_dataflows.runs.statements import take
from django_dataflows.runs.transitions import TRANSITIONS, Transition, refusal
from django_dataflows.runs.writes import apply, apply_many
from django_dataflows.validators import validate_configuration, validate_json_object

if TYPE_CHECKING:
    from collections.abc import Iterable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger("django_dataflows.executor")


#: Exceptions that end a run as ``timed_out``. Backends add their own (Celery's soft
#: time limit) with :func:`register_timeout_exception`.
_timeout_exceptions: list[type[BaseException]] = [FlowTimeout]


def _one_statement_path() -> bool:
    """Take runs with one statement (:func:`django_dataflows.runs.statements.take`)?

    On PostgreSQL, outside a transaction: inside one, the caller's commit decides
    durability, and the ORM's statements keep to it.
    """
    return connection.vendor == "postgresql" and not connection.in_atomic_block


START, SUCCEED, FAIL, TIME_OUT = (
    TRANSITIONS[name] for name in ("start", "succeed", "fail", "time_out")
)
STOP_CANCELLED, STOP_PAUSED = TRANSITIONS["stop_cancelled"], TRANSITIONS["stop_paused"]
CANCEL, REQUEST_CANCEL = TRANSITIONS["cancel"], TRANSITIONS["request_cancel"]
REQUEST_PAUSE, RESUME, RETRY = (TRANSITIONS[n] for n in ("request_pause", "resume", "retry"))
REFUSE, RENEW = TRANSITIONS["refuse"], TRANSITIONS["renew"]
TIME_OUT_LOST = TRANSITIONS["time_out_lost"]


def register_timeout_exception(exc_class: type[BaseException]) -> None:
    if exc_class not in _timeout_exceptions:
        _timeout_exceptions.append(exc_class)


class RunExecutor:
    """Run a data flow and record what happened; cancel and pause runs.

    ``RunExecutor.execute(data_flow)`` is the single entry point: it records a run,
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
            run = take(START, run_id)
            if run is None:
                cls._not_taken(run_id)
                return
            # The flow row was read by the same statement, after the mark: it is current.
            session = cls._session(run, resumed=_resumed(run))
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
        # One commit for the run, its flow's status and its step rows.
        with transaction.atomic():
            if not apply(START, run, savepoint=False):
                run.refresh_from_db(fields=["status"])
                raise RunNotPending(run.pk, run.status)
            session = cls._session(run, resumed=_resumed(run))
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
        if state == data_flow.state:
            return None  # as stored: nothing to write, nothing to check
        json_value(state, "self.state")
        return state

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
        fields = {"result": result, **(session.final_fields() if session else {})}
        if not cls._finish(SUCCEED, run, fields, flow_fields=flow_fields, session=session):
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
        fields = {
            "error_message": without_nul(message) or _error_message(exc),
            "error_backtrace": without_nul("".join(traceback.format_exception(exc))),
            **(session.final_fields() if session else {}),
        }
        transition = TIME_OUT if status == RunStatus.TIMED_OUT else FAIL
        if cls._finish(transition, run, fields, session=session):
            logger.error(
                "Data flow %r run %s %s: %s", run.data_flow.name, run.pk, status.label, exc
            )

    @classmethod
    def _record_interruption(
        cls, run: DataFlowRun, interruption: RunInterrupted, session: RunSession
    ) -> None:
        """The body stopped at a checkpoint: the run becomes ``paused`` or ``cancelled``."""
        extra = session.final_fields()
        if interruption.action == "pause" and apply(STOP_PAUSED, run, fields=extra):
            logger.info("Data flow %r run %s paused.", run.data_flow.name, run.pk)
            return
        # Cancelled, or asked to pause and then to cancel before the pause took effect.
        fields = {"error_message": CANCELLED_AT_CHECKPOINT, **extra}
        if cls._finish(STOP_CANCELLED, run, fields, session=session):
            logger.info("Data flow %r run %s cancelled.", run.data_flow.name, run.pk)
        else:  # the run was ended meanwhile (timed out by a heartbeat): keep that
            run.refresh_from_db(fields=["status"])
            logger.warning("Run %s stopped at a checkpoint; it is %s.", run.pk, run.status)

    # -- transitions outside execute() ----------------------------------------------

    @classmethod
    def record_lost_process(cls, run: DataFlowRun, exc: BaseException, *, timed_out: bool) -> bool:
        """End a run whose process died under it (a Celery pool process was killed).

        Called by the process that saw it die (the worker's parent). ``timed_out`` when a
        hard time limit killed it: the run ends ``timed_out``, else ``failed``. ``False`` if
        the run had already ended (its outcome was recorded before the process went).
        """
        reason = "was killed at its hard time limit" if timed_out else "was lost"
        message = f"The worker process running the flow {reason}: {_error_message(exc)}"
        done = cls._finish(TIME_OUT if timed_out else FAIL, run, {"error_message": message})
        if done:
            logger.error("Data flow %r run %s: %s", run.data_flow.name, run.pk, message)
        return done

    @classmethod
    def record_enqueue_failure(cls, run: DataFlowRun, exc: BaseException) -> bool:
        """Mark a pending run the backend refused as ``failed``; what it was for stays due.

        Nothing ran, so the run gives back what it was started for
        (:func:`~django_dataflows.runs.bookkeeping.give_back`): a scheduled run's slot (the
        flow's ``next_run_at`` returns to it), a backfill run's slot (its backfill returns
        to it), a downstream run's generation. The failed run lets go of its slot
        (``scheduled_for`` is cleared, its error message says which slot), so the next
        heartbeat starts it again. A manual run leaves everything as it was.
        """
        slot = run.scheduled_for
        message = f"Could not enqueue the run: {exc}"
        if slot is not None:
            kind = "backfill slot" if run.backfill_id is not None else "schedule slot"
            message += f" ({kind} {slot.isoformat()} stays due)"
        fields = {
            "error_message": message,
            "error_backtrace": "".join(traceback.format_exception(exc)),
            "scheduled_for": None,
        }
        with transaction.atomic():
            done = apply(REFUSE, run, fields=fields)
            if done:
                run.scheduled_for = slot
                give_back([run])
                run.scheduled_for = None
        if done:
            emit("run_finished", run)
        return done

    @classmethod
    def record_not_tried(cls, runs: list[DataFlowRun], exc: BaseException) -> int:
        """Give back, in a few statements whatever their number, runs a batch never tried.

        As :meth:`record_enqueue_failure` does for one run: each ends ``failed`` with
        ``exc`` as its reason, lets go of its slot, and its flow is due again at that slot.
        Returns how many were still pending.
        """
        message = f"Could not enqueue the run: {exc} (its schedule slot stays due)"
        slots = {run.pk: run.scheduled_for for run in runs}
        with transaction.atomic():
            given_back = apply_many(
                REFUSE, runs, fields={"error_message": message, "scheduled_for": None}
            )
            for run in given_back:
                run.scheduled_for = slots[run.pk]
            give_back(given_back)
            for run in given_back:
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
        run.refresh_from_db()
        for _attempt in range(3):  # the run may move on between the two conditional updates
            if cls._finish(CANCEL, run, {"error_message": reason}):
                break
            if apply(REQUEST_CANCEL, run):
                break
            previous = run.status
            run.refresh_from_db()
            if run.status == previous or run.status not in ACTIVE:
                raise refusal(run, "cancel")
        else:  # pragma: no cover - three state changes in a row between our updates
            raise refusal(run, "cancel")
        run.refresh_from_db()
        return run

    @classmethod
    def pause(cls, run: DataFlowRun) -> DataFlowRun:
        """Ask the in-progress ``run`` to pause at its next checkpoint; return it, up to date.

        It then becomes ``paused``: still active (the heartbeat skips its flow), never timed
        out, and continued by :meth:`resume`. ``InvalidRunState`` for a run that is not in
        progress, or that was already asked to pause or cancel.
        """
        if not apply(REQUEST_PAUSE, run):
            run.refresh_from_db()
            raise refusal(run, "pause")
        run.refresh_from_db()
        return run

    @classmethod
    def time_out_stuck_runs(cls, now: datetime | None = None) -> int:
        """End runs in progress past their timeout (``DataFlowRun.objects.stuck()``).

        A stuck run would otherwise block its flow forever: it ends ``timed_out``, or
        ``cancelled`` if it was asked to cancel (its body never reached a checkpoint; its
        worker was probably lost). Paused runs never time out, and a run still pending is
        not stuck but unclaimed (:meth:`take_back_unclaimed_runs`). Returns how many runs
        were ended. ``now`` defaults to the database's clock, the one that stamped the runs.
        """
        now = now or database_now()
        by_timeout: dict[tuple[int, bool], list[DataFlowRun]] = defaultdict(list)
        for run in DataFlowRun.objects.stuck(now).select_related("data_flow"):
            # effective_timeout is stuck()'s annotation, which the type checker cannot see.
            timeout: int = run.effective_timeout  # type: ignore[attr-defined]
            by_timeout[timeout, run.cancel_requested_at is not None].append(run)
        ended: list[DataFlowRun] = []
        for (timeout, cancel_requested), runs in by_timeout.items():
            if cancel_requested:
                message = (
                    f"Cancelled: no checkpoint was reached within the {timeout}-second "
                    "timeout; its worker was probably lost."
                )
                ended += apply_many(STOP_CANCELLED, runs, fields={"error_message": message})
            else:
                message = (
                    f"Timed out: still in progress after the {timeout}-second timeout; its "
                    "worker was probably lost."
                )
                ended += apply_many(TIME_OUT_LOST, runs, fields={"error_message": message})
        cls._after_bulk_finish(ended)
        return len(ended)

    @classmethod
    def take_back_unclaimed_runs(cls, now: datetime | None = None) -> Redelivery:
        """Take back pending runs no worker started within ``PICKUP_TIMEOUT``.

        The database is the source of truth and the broker only a transport: a run whose
        message was lost (a broker restarted empty), or whose in-process batch died, is
        still ``pending`` here. Each is returned to be handed to the backend again, the same
        run, so its conditional start still lets one body run, with ``redeliveries`` + 1 and
        its pickup deadline restarted. A run already redelivered ``MAX_REDELIVERIES`` times
        ends ``failed`` ("never picked up") instead. Row locks (skipping locked rows) keep
        two heartbeats from taking back the same run. ``now`` defaults to the database's
        clock, read once, the one that stamped the runs.
        """
        now = now or database_now()
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
            given_up: list[DataFlowRun] = []
            for run in [run for run in unclaimed if run.redeliveries >= limit]:
                given_up += apply_many(
                    REFUSE, [run], fields={"error_message": _never_picked_up(run)}
                )
            again = apply_many(RENEW, again, fields={"redeliveries": F("redeliveries") + 1})
            for run in again:
                run.redeliveries += 1
        if given_up:
            for run in given_up:
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
        apply_many(RENEW, runs)

    # -- helpers --------------------------------------------------------------------

    @classmethod
    def _finish(
        cls,
        transition: Transition,
        run: DataFlowRun,
        fields: dict[str, Any],
        *,
        flow_fields: dict[str, Any] | None = None,
        session: RunSession | None = None,
    ) -> bool:
        """End ``run`` by ``transition`` if it still applies, then send ``run_finished``.

        The run, its flow and its steps change in one commit; ``False`` if the run had
        moved on. With the ``session`` that ran it, steps are closed only if it has any.
        """
        has_steps = session is None or session.has_steps
        done = apply(transition, run, fields=fields, flow_fields=flow_fields, has_steps=has_steps)
        if done:
            emit("run_finished", run)
        return done

    @staticmethod
    def _after_bulk_finish(runs: Iterable[DataFlowRun]) -> None:
        for run in runs:
            emit("run_finished", run)


#: What a run cancelled at a checkpoint says.
CANCELLED_AT_CHECKPOINT = "Cancelled: stopped at a checkpoint."
#: Run statuses that can be retried.
RETRYABLE = tuple(RETRY.sources)
ACTIVE = (RunStatus.PENDING, RunStatus.IN_PROGRESS, RunStatus.PAUSED)


def _resumed(run: DataFlowRun) -> bool:
    """Is the run just taken a resumed one? Its first start is older than this one.

    The same rule on every path: the start transition sets ``activated_at`` to the
    database's clock and ``started_at`` only if it was empty, in one statement.
    """
    return run.started_at != run.activated_at


def without_nul(text: str) -> str:
    """``text`` with each NUL character written as ``\\x00`` (PostgreSQL refuses NUL)."""
    return text.replace("\x00", "\\x00")


def _error_message(exc: BaseException) -> str:
    return without_nul(str(exc).strip()) or type(exc).__name__


@dataclass
class Redelivery:
    """What :meth:`RunExecutor.take_back_unclaimed_runs` found."""

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
