"""The only writer of a run's state: carries a transition of the table out.

:func:`apply` on one run, :func:`apply_many` on many (see
:mod:`django_dataflows.runs.transitions` for what each transition writes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.db.models.functions import Now

from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    DataFlowRunStep,
    StepStatus,
    announce_runs_changed,
)
from django_dataflows.runs.sql import update_returning
from django_dataflows.runs.statements import RETURNED, apply_as_statement, load_flow, load_run
from django_dataflows.runs.transitions import STEP_STATUS_FOR_RUN, Transition

if TYPE_CHECKING:
    from collections.abc import Iterable


def _one_statement(closes_steps: bool) -> bool:
    """Carry a transition out as one statement? On PostgreSQL, outside a transaction.

    Inside one, the caller's commit decides durability, and the ORM's statements keep to
    it. A transition that closes steps goes through the ORM: the step trigger writes the
    run's row, which one statement may not write twice.
    """
    return connection.vendor == "postgresql" and not connection.in_atomic_block and not closes_steps


def apply(
    transition: Transition,
    run: DataFlowRun,
    *,
    fields: dict[str, Any] | None = None,
    flow_fields: dict[str, Any] | None = None,
    has_steps: bool = True,
    savepoint: bool = True,
) -> bool:
    """Carry ``transition`` out on ``run`` if it still applies; ``False`` if the run moved on.

    ``fields`` are more of the run's fields to write (an error, a result), ``flow_fields``
    more of its flow's (the flow's new ``state``). ``run`` and ``run.data_flow`` show what
    was written, the database's timestamps and ``duration_ms`` included. ``has_steps``
    false: the caller knows the run has no step rows to close. ``savepoint`` false: the
    caller opened its transaction for this write, and a failure rolls all of it back (no
    savepoint of its own, two statements fewer).
    """
    closes_steps = transition.closes_steps and has_steps
    if _one_statement(closes_steps):
        return apply_as_statement(transition, run, fields=fields, flow_fields=flow_fields)
    with transaction.atomic(savepoint=savepoint):
        rows = update_returning(transition.runs([run.pk]), transition.assignments(fields), RETURNED)
        if not rows:
            return False
        load_run(run, rows[0], fields)
        values = transition.flow_values(run, flow_fields)
        if values and transition.flows([run.data_flow_id], [run.pk]).update(**values):
            load_flow(run.data_flow, values)
        if closes_steps:
            close_steps([run.pk], str(transition.target))
    announce_runs_changed([run.pk], connection.alias)
    return True


def apply_many(
    transition: Transition, runs: Iterable[DataFlowRun], *, fields: dict[str, Any] | None = None
) -> list[DataFlowRun]:
    """Carry ``transition`` out on each of ``runs`` it still applies to; return those.

    A few statements whatever the number of runs (the reaper's, a refused batch's).
    """
    by_pk = {run.pk: run for run in runs}
    if not by_pk:
        return []
    with transaction.atomic():
        rows = update_returning(
            transition.runs(by_pk), transition.assignments(fields), ("pk", *RETURNED)
        )
        moved = [by_pk[row["pk"]] for row in rows]
        for run, row in zip(moved, rows, strict=True):
            load_run(run, row, fields)
        flow_ids = {run.data_flow_id for run in moved}
        if moved and transition.flow_status:
            written = set(
                transition.flows(flow_ids, [run.pk for run in moved]).values_list("pk", flat=True)
            )
            DataFlow.objects.filter(pk__in=written).update(last_run_status=transition.target)
            for run in moved:
                if run.data_flow_id not in written:
                    continue
                run.data_flow.last_run_status = str(transition.target)
                # As apply() writes it: the flow's last run started when this one did.
                values = transition.flow_values(run)
                if "last_run_at" in values:
                    DataFlow.objects.filter(pk=run.data_flow_id).update(
                        last_run_at=values["last_run_at"]
                    )
                    run.data_flow.last_run_at = values["last_run_at"]
        if moved and transition.closes_steps:
            close_steps([run.pk for run in moved], str(transition.target))
    announce_runs_changed([run.pk for run in moved], connection.alias)
    return moved


def close_steps(run_ids: list[int], run_status: str) -> None:
    """Runs ended: each one's running step ends like the run; steps never reached are skipped."""
    step_status = STEP_STATUS_FOR_RUN.get(run_status, StepStatus.FAILED)
    message = "" if step_status == StepStatus.CANCELLED else f"The run ended {run_status}."
    DataFlowRunStep.objects.filter(run_id__in=run_ids, status=StepStatus.IN_PROGRESS).update(
        status=step_status, ended_at=Now(), error_message=message
    )
    DataFlowRunStep.objects.filter(run_id__in=run_ids, status=StepStatus.PENDING).update(
        status=StepStatus.SKIPPED
    )
    touch_runs(run_ids)


#: Databases on which a trigger (migration 0003) stamps the run's ``updated_at`` whenever
#: one of its steps is written; elsewhere :func:`touch_runs` does it with a second UPDATE.
STEP_TRIGGER_VENDORS = frozenset({"postgresql", "sqlite"})


def touch_runs(run_ids: Iterable[int]) -> None:
    """Stamp the runs' ``updated_at`` after a write to their steps, where no trigger does."""
    if connection.vendor not in STEP_TRIGGER_VENDORS:  # pragma: no cover - no such database
        DataFlowRun.objects.filter(pk__in=list(run_ids)).update()
