"""``FlowExecutor``: the only code that moves a run from one status to another.

Every transition is a conditional ``UPDATE … WHERE status IN (expected)``: a late or
duplicated message can never overwrite a finished run, and a flow body runs at most once
per run record.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from django_dataflows.bookkeeping import (
    create_pending_run,
    give_slot_back,
    record_outcome,
    record_outcomes,
)
from django_dataflows.events import emit
from django_dataflows.exceptions import DataFlowError, RunNotPending
from django_dataflows.flows import Flow, FlowContext
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger

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


class FlowExecutor:
    """Run a data flow and record what happened.

    ``FlowExecutor.execute(data_flow)`` is the single entry point: it records a run,
    instantiates the flow with the DataFlow's configuration, calls ``run()``, stores the
    outcome on the run and the flow, and returns the flow's result. On failure it stores
    the message and backtrace and re-raises the original exception.
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
        """
        run = cls._take_run(data_flow, run, trigger, user)
        cls._mark_in_progress(run)
        try:
            flow = cls._instantiate(data_flow, run)
            result = cls._serialisable(flow.run())
        except BaseException as exc:
            cls._record_failure(run, exc)
            raise
        cls._record_success(run, result)
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
            return create_pending_run(data_flow, trigger=trigger, user=user)
        if run.data_flow_id != data_flow.pk:
            raise ValueError(f"Run {run.pk} belongs to another data flow than {data_flow.name!r}.")
        run.data_flow = data_flow
        return run

    @classmethod
    def _mark_in_progress(cls, run: DataFlowRun) -> None:
        now = timezone.now()
        if not cls._transition(run, (RunStatus.PENDING,), RunStatus.IN_PROGRESS, started_at=now):
            run.refresh_from_db(fields=["status"])
            raise RunNotPending(run.pk, run.status)
        emit("run_started", run)

    @staticmethod
    def _instantiate(data_flow: DataFlow, run: DataFlowRun) -> Flow:
        flow_class = data_flow.flow_class  # FlowNotRegistered for anything unregistered
        return flow_class(data_flow.configuration, context=FlowContext(data_flow, run))

    @staticmethod
    def _serialisable(result: Any) -> Any:
        try:
            json.dumps(result, cls=DjangoJSONEncoder)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"The flow returned a result that cannot be stored as JSON: {exc}"
            ) from exc
        return result

    @classmethod
    def _record_success(cls, run: DataFlowRun, result: Any) -> None:
        if not cls._finish(
            run, (RunStatus.IN_PROGRESS,), RunStatus.SUCCESS, ended_at=timezone.now(), result=result
        ):
            run.refresh_from_db(fields=["status"])
            logger.warning("Run %s finished after it was marked %s; kept.", run.pk, run.status)

    @classmethod
    def _record_failure(cls, run: DataFlowRun, exc: BaseException) -> None:
        status = (
            RunStatus.TIMED_OUT if isinstance(exc, tuple(_timeout_exceptions)) else RunStatus.FAILED
        )
        if cls._finish(
            run,
            (RunStatus.IN_PROGRESS,),
            status,
            ended_at=timezone.now(),
            error_message=str(exc) or type(exc).__name__,
            error_backtrace="".join(traceback.format_exception(exc)),
        ):
            logger.error(
                "Data flow %r run %s %s: %s", run.data_flow.name, run.pk, status.label, exc
            )

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
                give_slot_back(run, slot)
        return done

    @classmethod
    def record_enqueued(cls, run: DataFlowRun, *, task_id: str = "", queue: str = "") -> None:
        """Store the backend's bookkeeping for a run it accepted."""
        fields = {"task_id": task_id, "queue": queue or run.queue}
        DataFlowRun.objects.filter(pk=run.pk).update(**fields)
        run.task_id, run.queue = fields["task_id"], fields["queue"]

    @classmethod
    def cancel(cls, run: DataFlowRun, reason: str = "Cancelled.") -> bool:
        """Cancel a pending or in-progress run; ``False`` if it had already finished."""
        return cls._finish(
            run,
            (RunStatus.PENDING, RunStatus.IN_PROGRESS),
            RunStatus.CANCELLED,
            last_run_at=False,
            ended_at=timezone.now(),
            error_message=reason,
        )

    @classmethod
    def time_out_stuck_runs(cls, now: datetime | None = None) -> int:
        """End runs past their timeout (``DataFlowRun.objects.stuck()``) as ``timed_out``.

        Either kind of stuck run would otherwise block its flow forever. Returns how many.
        """
        now = now or timezone.now()
        groups: dict[tuple[str, int], list[int]] = defaultdict(list)
        # effective_timeout is stuck()'s annotation, which the type checker cannot see.
        stuck = DataFlowRun.objects.stuck(now).values_list("pk", "status", "effective_timeout")  # type: ignore[misc]
        for pk, status, timeout in stuck:
            groups[(status, timeout)].append(pk)
        count = 0
        for (status, timeout), pks in groups.items():
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
                    status=RunStatus.TIMED_OUT,
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
        **fields: Any,
    ) -> bool:
        """End ``run`` as ``status`` if it is still in ``expected``; tell its flow; signal.

        The run and its flow change in one transaction (one commit, never one without the
        other); ``run_finished`` is sent after it. ``False`` if the run had moved on.
        """
        with transaction.atomic():
            done = cls._transition(run, expected, status, **fields)
            if done:
                record_outcome(run, last_run_at=last_run_at)
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
        runs = list(runs)
        record_outcomes(runs, RunStatus.TIMED_OUT)
        for run in runs:
            emit("run_finished", run)
