"""A flow's bookkeeping: every write of ``last_run_at``, ``last_run_status`` and ``next_run_at``.

What a flow row says about its schedule changes here:

* **a run starts** (:func:`create_pending_run` for one run, :func:`advance_claimed` for a
  heartbeat's batch): ``last_run_at`` is the start, ``last_run_status`` is ``pending`` (the
  run is only queued: the active run itself says when a worker has it), and
  ``next_run_at`` moves to the next slot;
* **a run is refused by the backend** (:func:`give_back`): what it was started for is due
  again: a scheduled run's slot on the flow, a backfill run's slot on its backfill, a
  downstream run's generation (:func:`~django_dataflows.pipelines.give_generations_back`).

What a run's later transitions write on its flow (its status, its outcome) is part of each
transition's definition (:mod:`django_dataflows.runs.transitions`).

The slot arithmetic is called from :func:`next_after_claim` and :func:`next_after_start`
only, so a new kind of schedule changes these two functions and nothing else. (The one
other write is the row's own: ``DataFlow.save()`` of a new flow, or of one whose schedule
changed, stores ``compute_next_run_at()`` with the row; the models import nothing above
them, this module included.)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q

from django_dataflows.exceptions import RunAlreadyActive
from django_dataflows.models import (
    Backfill,
    BackfillStatus,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    row_lock,
)
from django_dataflows.pipelines import give_generations_back
from django_dataflows.schedules import next_slot_for
from django_dataflows.validators import validate_run_input

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


# -- slots ----------------------------------------------------------------------------


def next_after_claim(data_flow: DataFlow, slot: datetime, now: datetime) -> datetime:
    """The slot after ``slot`` once a heartbeat has claimed it (no drift, missed slots skipped).

    Interval or cron (:func:`~django_dataflows.schedules.next_slot_for`); ``InvalidSchedule``
    for a cron expression or zone stored without validation.
    """
    return next_slot_for(data_flow, slot, now)


def next_after_start(data_flow: DataFlow, next_run_at: datetime, now: datetime) -> datetime:
    """``next_run_at`` after a run started by hand.

    An interval flow's next scheduled run moves to at least one interval from now; a cron
    flow's next slot never moves (a cron schedule is a wall-clock promise).
    """
    if data_flow.cron or data_flow.run_interval is None:
        return next_run_at
    return max(next_run_at, now + timedelta(seconds=data_flow.run_interval))


# -- a run starts ---------------------------------------------------------------------


def create_pending_run(
    data_flow: DataFlow,
    trigger: str = RunTrigger.MANUAL,
    user: AbstractBaseUser | AnonymousUser | None = None,
    *,
    attempt: int = 1,
    now: datetime | None = None,
    input: dict[str, Any] | None = None,
) -> DataFlowRun:
    """Record a new pending run of ``data_flow`` and move its schedule; ``RunAlreadyActive``.

    A run started by hand pushes the next scheduled run to at least ``run_interval``
    later, as a scheduled one would (the heartbeat claims in bulk: :func:`advance_claimed`).
    ``input`` (a JSON object, else ``ValidationError``) is stored on the run.
    """
    input = {} if input is None else input
    validate_run_input(input)
    run = DataFlowRun(
        data_flow=data_flow,
        status=RunStatus.PENDING,
        trigger=trigger,
        triggered_by_id=user.pk if user is not None and user.is_authenticated else None,
        queue=data_flow.effective_queue,
        attempt=attempt,
        input=input,
    )
    with transaction.atomic():
        # Lock the flow row first, as a heartbeat's claim does: the same lock order on both
        # paths, and the next_run_at read here is the current one.
        schedule = row_lock(DataFlow.objects.filter(pk=data_flow.pk)).values_list(
            "next_run_at", flat=True
        )
        next_run_at = schedule.get()
        if data_flow.runs.active().exists():
            raise RunAlreadyActive(data_flow.name)
        try:
            with transaction.atomic():
                run.save(force_insert=True)
        except IntegrityError:  # a database without row locks raced us
            if data_flow.runs.active().exists():
                raise RunAlreadyActive(data_flow.name) from None
            raise
        # The run's creation, on the database's clock (returned by the insert).
        now = now or run.created_at
        data_flow.last_run_at = now
        data_flow.last_run_status = RunStatus.PENDING
        data_flow.next_run_at = next_after_start(data_flow, next_run_at, now)
        DataFlow.objects.filter(pk=data_flow.pk).update(
            last_run_at=data_flow.last_run_at,
            last_run_status=data_flow.last_run_status,
            next_run_at=data_flow.next_run_at,
        )
    return run


_ADVANCE_SQL = """
    UPDATE {table} AS flow
    SET next_run_at = advance.next_run_at, last_run_at = %s, last_run_status = %s
    FROM unnest(%s::bigint[], %s::timestamptz[]) AS advance(id, next_run_at)
    WHERE flow.id = advance.id
"""


def advance_claimed(
    flows: list[DataFlow], now: datetime, next_slots: dict[int, datetime] | None = None
) -> None:
    """Move each claimed flow past the slot its new run took (one statement for them all).

    ``next_slots`` are the flows' next slots if the caller has them already (the claim
    computes them first, to skip a flow whose schedule cannot be evaluated); the others
    come from :func:`next_after_claim`.

    ``bulk_update`` builds a ``CASE`` with a branch per row, which costs ~1 s of Python
    for 1,000 flows; PostgreSQL takes the values as two arrays instead (9x faster in
    ``bench/heartbeat.py``). Other databases, SQLite included, use ``bulk_update``.
    """
    if not flows:
        return
    next_slots = next_slots or {}
    for flow in flows:
        flow.next_run_at = next_slots.get(flow.pk) or next_after_claim(
            flow, flow.next_run_at or now, now
        )
        flow.last_run_at = now
        flow.last_run_status = RunStatus.PENDING
    if connection.vendor != "postgresql":
        DataFlow.objects.bulk_update(flows, ["next_run_at", "last_run_at", "last_run_status"])
        return
    table = connection.ops.quote_name(DataFlow._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            _ADVANCE_SQL.format(table=table),
            [
                now,
                RunStatus.PENDING.value,
                [flow.pk for flow in flows],
                [flow.next_run_at for flow in flows],
            ],
        )


# -- a run is refused -----------------------------------------------------------------


def give_back(runs: Iterable[DataFlowRun]) -> None:
    """Make what runs the backend refused were started for due again (nothing ran).

    Each run's ``scheduled_for`` is its slot here (the refusal clears it on the row). A
    scheduled run's flow returns to its slot; a backfill run's backfill returns to its slot
    (the flow's own schedule stays where it is); a downstream run gives its generation back;
    a manual run leaves everything as it was. Call inside the refusal's transaction.
    """
    runs = list(runs)
    flows = []
    for run in runs:
        slot = run.scheduled_for
        if slot is None:
            continue
        if run.trigger == RunTrigger.BACKFILL and run.backfill_id is not None:
            Backfill.objects.filter(
                Q(next_slot__isnull=True) | Q(next_slot__gt=slot),
                pk=run.backfill_id,
                status=BackfillStatus.RUNNING,
            ).update(next_slot=slot, done=F("done") - 1)
        elif run.trigger == RunTrigger.SCHEDULE:
            run.data_flow.next_run_at = slot
            flows.append(run.data_flow)
    if len(flows) == 1:
        DataFlow.objects.filter(pk=flows[0].pk, next_run_at__gt=flows[0].next_run_at).update(
            next_run_at=flows[0].next_run_at
        )
    elif flows:
        DataFlow.objects.bulk_update(flows, ["next_run_at"])
    give_generations_back(runs)
