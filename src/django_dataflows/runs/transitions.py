"""Every change of a run's status, defined once.

A :class:`Transition` says from which statuses a run may move, to which status, which of
its fields take the database's clock, and what else changes with it: the flow's
bookkeeping (``last_run_status``, ``last_run_at``, its ``state``), the run's unfinished
steps, and the announcement to live status. :data:`TRANSITIONS` is the whole table.

:mod:`django_dataflows.runs.writes` carries a transition out: a conditional update
(``WHERE status IN (sources)``), so a late or duplicated message can never overwrite a
finished run. On any database the run, its flow and its steps change through the ORM in
one transaction; on PostgreSQL's worker path (outside a transaction) the same querysets are
compiled into one statement (:mod:`django_dataflows.runs.statements`): two executions of
one definition, tested by one suite (``tests/test_transitions.py``).

Run control reads the table too: :func:`allowed_actions` (the admin's buttons) and
:func:`refusal` (``InvalidRunState``'s message, the API's 409).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.functions import Coalesce, Now

from django_dataflows.exceptions import InvalidRunState
from django_dataflows.models import ACTIVE_STATUSES, DataFlow, DataFlowRun, RunStatus, StepStatus

if TYPE_CHECKING:
    from collections.abc import Iterable


@dataclass(frozen=True)
class Transition:
    """One change of a run's state (see the module's docstring)."""

    #: Its name in :data:`TRANSITIONS`.
    name: str
    #: The statuses it applies from.
    sources: tuple[str, ...]
    #: The status it moves to; ``None`` when the status stays (a cancel or pause request).
    target: str | None = None
    #: Fields that must be empty for it to apply (a request not made yet).
    requires_empty: tuple[str, ...] = ()
    #: Fields set to the database's clock.
    stamps: tuple[str, ...] = ()
    #: Fields set to the database's clock only if empty (``started_at`` keeps the first start).
    first_stamps: tuple[str, ...] = ()
    #: Fields emptied.
    clears: tuple[str, ...] = ()
    #: Show the new status on the flow (``last_run_status``). For a run that ends, only if
    #: no newer run of the flow is active by then (it is what the flow shows instead).
    flow_status: bool = False
    #: With the outcome, the flow's ``last_run_at`` becomes the run's first start.
    flow_last_run_at: bool = False
    #: The run's unfinished steps end with it (the running one like the run, the rest skipped).
    closes_steps: bool = False
    #: Its commit is waited for. ``False`` for the worker's start mark only: lost in a crash,
    #: the run is still pending, and the heartbeat hands it over again.
    durable: bool = True
    #: The run-control action it carries out (``cancel``, ``pause``, ``resume``, ``retry``).
    action: str = ""

    @property
    def ends(self) -> bool:
        return self.target is not None and self.target not in ACTIVE_STATUSES

    def allows(self, run: DataFlowRun) -> bool:
        """Would it apply to ``run`` as loaded? (The update itself decides, atomically.)"""
        return run.status in self.sources and all(
            getattr(run, name) is None for name in self.requires_empty
        )

    def runs(self, pks: Iterable[int]) -> QuerySet[DataFlowRun]:
        """The runs among ``pks`` that it applies to now."""
        conditions = {f"{name}__isnull": True for name in self.requires_empty}
        return DataFlowRun.objects.filter(
            pk__in=list(pks), status__in=self.sources, **conditions
        ).order_by()

    def assignments(self, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """What it writes to the run, with the caller's ``fields`` (error, result, …)."""
        values: dict[str, Any] = {"updated_at": Now()}
        if self.target is not None:
            values["status"] = self.target
        values.update(dict.fromkeys(self.stamps, Now()))
        values.update({name: Coalesce(F(name), Now()) for name in self.first_stamps})
        values.update(dict.fromkeys(self.clears))
        values.update(fields or {})
        return values

    def flow_values(
        self, run: DataFlowRun, flow_fields: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What it writes to the run's flow (nothing for a request)."""
        values: dict[str, Any] = {}
        if self.flow_status and self.target is not None:
            values["last_run_status"] = self.target
        if self.flow_last_run_at and run.started_at is not None:
            values["last_run_at"] = run.started_at
        values.update(flow_fields or {})
        return values

    def flows(self, flow_ids: Iterable[int], run_ids: Iterable[int]) -> QuerySet[DataFlow]:
        """The flows among ``flow_ids`` it writes to.

        For an end, only those with no active run besides ``run_ids`` (the runs ending).
        """
        flows = DataFlow.objects.filter(pk__in=list(flow_ids)).order_by()
        if not self.ends:
            return flows
        other_active = DataFlowRun.objects.filter(
            data_flow=OuterRef("pk"), status__in=ACTIVE_STATUSES
        ).exclude(pk__in=list(run_ids))
        return flows.exclude(Exists(other_active))


_ENDED = ("ended_at",)

#: Every transition of a run, by name.
TRANSITIONS: dict[str, Transition] = {
    t.name: t
    for t in (
        # A worker takes the pending run.
        Transition(
            "start",
            (RunStatus.PENDING,),
            RunStatus.IN_PROGRESS,
            stamps=("activated_at",),
            first_stamps=("started_at",),
            flow_status=True,
            durable=False,
        ),
        # The body returned, or failed, or ran past its time.
        Transition(
            "succeed",
            (RunStatus.IN_PROGRESS,),
            RunStatus.SUCCESS,
            stamps=_ENDED,
            flow_status=True,
            flow_last_run_at=True,
        ),
        Transition(
            "fail",
            (RunStatus.IN_PROGRESS,),
            RunStatus.FAILED,
            stamps=_ENDED,
            flow_status=True,
            flow_last_run_at=True,
            closes_steps=True,
        ),
        Transition(
            "time_out",
            (RunStatus.IN_PROGRESS,),
            RunStatus.TIMED_OUT,
            stamps=_ENDED,
            flow_status=True,
            flow_last_run_at=True,
            closes_steps=True,
        ),
        # The reaper: a run in progress past its timeout lost its worker. Unless a cancel
        # was requested meanwhile, which the next reaping honours (stop_cancelled).
        Transition(
            "time_out_lost",
            (RunStatus.IN_PROGRESS,),
            RunStatus.TIMED_OUT,
            requires_empty=("cancel_requested_at",),
            stamps=_ENDED,
            flow_status=True,
            flow_last_run_at=True,
            closes_steps=True,
        ),
        # The body stopped at a checkpoint after a cancel request (or its worker was lost
        # with one pending).
        Transition(
            "stop_cancelled",
            (RunStatus.IN_PROGRESS,),
            RunStatus.CANCELLED,
            stamps=_ENDED,
            flow_status=True,
            flow_last_run_at=True,
            closes_steps=True,
        ),
        # The body stopped at a checkpoint after a pause request; a cancel request wins.
        Transition(
            "stop_paused",
            (RunStatus.IN_PROGRESS,),
            RunStatus.PAUSED,
            requires_empty=("cancel_requested_at",),
            clears=("pause_requested_at",),
            flow_status=True,
        ),
        # Run control.
        Transition(
            "cancel",
            (RunStatus.PENDING, RunStatus.PAUSED),
            RunStatus.CANCELLED,
            stamps=("ended_at", "cancel_requested_at"),
            flow_status=True,
            closes_steps=True,
            action="cancel",
        ),
        Transition(
            "request_cancel",
            (RunStatus.IN_PROGRESS,),
            requires_empty=("cancel_requested_at",),
            stamps=("cancel_requested_at",),
            action="cancel",
        ),
        Transition(
            "request_pause",
            (RunStatus.IN_PROGRESS,),
            requires_empty=("cancel_requested_at", "pause_requested_at"),
            stamps=("pause_requested_at",),
            action="pause",
        ),
        Transition(
            "resume",
            (RunStatus.PAUSED,),
            RunStatus.PENDING,
            stamps=("activated_at",),
            clears=("pause_requested_at",),
            flow_status=True,
            action="resume",
        ),
        # A new run like this one (trigger "retry"): the run itself does not change.
        Transition(
            "retry",
            (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED),
            action="retry",
        ),
        # Hand-over: the backend refused the run, or it was never picked up (a resumed run
        # has steps: the ones left are skipped).
        Transition(
            "refuse",
            (RunStatus.PENDING,),
            RunStatus.FAILED,
            stamps=_ENDED,
            flow_status=True,
            closes_steps=True,
        ),
        # Hand-over again (redelivery), or a sign of life of the batch it waits in.
        Transition("renew", (RunStatus.PENDING,), stamps=("activated_at",)),
    )
}

#: Run-control actions and the transitions that carry each out, in the order tried.
ACTIONS: dict[str, tuple[Transition, ...]] = {
    action: tuple(t for t in TRANSITIONS.values() if t.action == action)
    for action in ("cancel", "pause", "resume", "retry")
}

#: What an unfinished step of a run that ended with this status becomes.
STEP_STATUS_FOR_RUN: dict[str, str] = {
    RunStatus.CANCELLED: StepStatus.CANCELLED,
    RunStatus.FAILED: StepStatus.FAILED,
    RunStatus.TIMED_OUT: StepStatus.FAILED,
}


def allowed_actions(run: DataFlowRun) -> list[str]:
    """The run-control actions ``run`` allows as loaded (the admin's buttons)."""
    return [
        action
        for action, transitions in ACTIONS.items()
        if any(transition.allows(run) for transition in transitions)
    ]


def refusal(run: DataFlowRun, action: str) -> InvalidRunState:
    """The ``InvalidRunState`` saying why ``action`` cannot apply to ``run`` now."""
    transitions = ACTIONS[action]
    status = run.status
    if any(status in transition.sources for transition in transitions):
        # The status allows it, but a request already made blocks it.
        asked = "cancel" if run.cancel_requested_at else "pause"
        ends = "it ends" if asked == "cancel" else "it takes effect"
        reason = f"a {asked} was already requested; {ends} at its next checkpoint."
    else:
        allowed = [s for s in RunStatus.values if any(s in t.sources for t in transitions)]
        if len(transitions) == 1:  # in the order the table gives them
            allowed = list(transitions[0].sources)
        listed = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        reason = f"it is {status}, not {listed}."
    return InvalidRunState(run.pk, status, action, reason)
