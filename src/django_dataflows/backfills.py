"""Backfills: run the past slots of a flow's schedule, oldest first, one at a time.

:func:`create_backfill` checks and records a backfill (``DataFlow.backfill()`` lands here);
:func:`next_backfill_runs` hands out the next slot of each running backfill whose flow is
free. The heartbeat calls it, and so does the end of a backfill's run (the next slot starts
at once). Each slot runs once per backfill: a database constraint on (backfill, slot)
backs the cursor up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from django_dataflows.models import (
    Backfill,
    BackfillStatus,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    row_lock,
)
from django_dataflows.schedules import InvalidSchedule, iter_cron

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

#: Most slots a backfill may have without ``force``.
MAX_BACKFILL_SLOTS = 10_000
#: Most slots a backfill may have at all (counting a cron schedule's slots takes time).
MAX_FORCED_SLOTS = 100_000
_JUST_BEFORE = timedelta(microseconds=1)


def schedule_slots(data_flow: DataFlow, start: datetime, end: datetime) -> Iterator[datetime]:
    """The slots of the flow's schedule in ``[start, end)``, in order.

    A cron flow's by the Schedules rules (DST included); an interval flow's on its grid
    (``next_run_at`` plus or minus whole intervals). ``InvalidSchedule`` without a schedule
    or with one stored invalid.
    """
    if data_flow.cron:
        previous = None
        for slot in iter_cron(data_flow.cron, data_flow.timezone, start - _JUST_BEFORE):
            if slot >= end:
                return
            if slot != previous:  # two wall-clock times in one DST gap: one slot
                yield slot
            previous = slot
        return
    if data_flow.run_interval is None:
        raise InvalidSchedule(f"Data flow {data_flow.name!r} has no schedule.")
    step = timedelta(seconds=data_flow.run_interval)
    slot = _first_interval_slot(data_flow, start)
    while slot < end:
        yield slot
        slot += step


def _first_interval_slot(data_flow: DataFlow, start: datetime) -> datetime:
    assert data_flow.run_interval is not None
    anchor = data_flow.next_run_at or data_flow.created_at or start
    steps = math.ceil((start - anchor).total_seconds() / data_flow.run_interval)
    return anchor + timedelta(seconds=steps * data_flow.run_interval)


def count_slots(data_flow: DataFlow, start: datetime, end: datetime, limit: int) -> int:
    """How many slots ``[start, end)`` holds, counting no further than ``limit + 1``."""
    if not data_flow.cron and data_flow.run_interval is not None:
        # Arithmetic: an interval's slots are counted without walking them.
        first = _first_interval_slot(data_flow, start)
        if first >= end:
            return 0
        return math.ceil((end - first).total_seconds() / data_flow.run_interval)
    count = 0
    for _slot in schedule_slots(data_flow, start, end):
        count += 1
        if count > limit:
            break
    return count


def create_backfill(
    data_flow: DataFlow,
    start: datetime,
    end: datetime,
    *,
    rerun: bool = False,
    user: AbstractBaseUser | AnonymousUser | None = None,
    force: bool = False,
) -> Backfill:
    """Check and record a backfill of ``[start, end)``; ``ValidationError`` naming the problem.

    Refused, with nothing written: ``end`` not after ``start``, a flow without a schedule
    (or with one stored invalid), a range without any slot, more than
    :data:`MAX_BACKFILL_SLOTS` slots without ``force``, a range overlapping a running
    backfill of the flow.
    """
    start, end = _aware(start), _aware(end)
    if end <= start:
        raise ValidationError(
            {"end": f"The end ({end.isoformat()}) must be after the start ({start.isoformat()})."},
            code="range",
        )
    if not data_flow.has_schedule:
        raise ValidationError(
            f"Data flow {data_flow.name!r} has no schedule (neither cron nor run interval): "
            "it has no slots to backfill.",
            code="no_schedule",
        )
    try:
        total = count_slots(
            data_flow, start, end, MAX_FORCED_SLOTS if force else MAX_BACKFILL_SLOTS
        )
        first = next(schedule_slots(data_flow, start, end), None)
    except InvalidSchedule as exc:
        raise ValidationError(f"The schedule cannot be evaluated: {exc}", code="schedule") from exc
    except (OverflowError, ValueError) as exc:  # a range near the ends of the calendar
        raise ValidationError(f"The range is out of bounds: {exc}", code="range") from exc
    if first is None:
        raise ValidationError(
            f"No slot of {data_flow.name!r}'s schedule falls in "
            f"[{start.isoformat()}, {end.isoformat()}).",
            code="empty",
        )
    if total > MAX_BACKFILL_SLOTS and not force:
        raise ValidationError(
            f"The range holds more than {MAX_BACKFILL_SLOTS:,} slots; narrow it, or force it "
            "(--force, force=True) if you mean it.",
            code="too_many",
        )
    if total > MAX_FORCED_SLOTS:
        raise ValidationError(
            f"The range holds more than {MAX_FORCED_SLOTS:,} slots, too many even forced; "
            "split it into several backfills.",
            code="too_many",
        )
    with transaction.atomic():
        # The flow row's lock makes two overlapping requests wait for each other.
        row_lock(DataFlow.objects.filter(pk=data_flow.pk)).values_list("pk").get()
        overlapping = Backfill.objects.filter(
            data_flow=data_flow, status=BackfillStatus.RUNNING, start__lt=end, end__gt=start
        ).first()
        if overlapping is not None:
            raise ValidationError(
                f"Backfill {overlapping.pk} of {data_flow.name!r} "
                f"([{overlapping.start.isoformat()}, {overlapping.end.isoformat()})) is still "
                "running over part of this range: cancel it or wait for it to finish.",
                code="overlap",
            )
        return Backfill.objects.create(
            data_flow=data_flow,
            start=start,
            end=end,
            rerun=rerun,
            total=total,
            next_slot=first,
            created_by_id=user.pk if user is not None and user.is_authenticated else None,
        )


def _aware(value: datetime) -> datetime:
    return timezone.make_aware(value) if timezone.is_naive(value) else value


def next_backfill_runs(now: datetime, flow_ids: list[int] | None = None) -> list[DataFlowRun]:
    """Create the pending run of the next slot of each running backfill whose flow is free.

    Call inside a transaction; the runs are handed to the backend after it commits. A
    backfill with no slot left and its flow free is done. Two queries when no backfill is
    running.
    """
    backfills = Backfill.objects.filter(status=BackfillStatus.RUNNING)
    if flow_ids is not None:
        backfills = backfills.filter(data_flow__in=flow_ids)
    locked = list(
        backfills.select_related("data_flow")
        .select_for_update(skip_locked=True, of=("self",))
        .order_by("created_at", "pk")
    )
    if not locked:
        return []
    busy = set(
        DataFlowRun.objects.active()
        .filter(data_flow__in={backfill.data_flow_id for backfill in locked})
        .values_list("data_flow_id", flat=True)
    )
    runs = []
    for backfill in locked:
        if backfill.data_flow_id in busy:
            continue
        run = _next_run(backfill, now)
        if run is not None:
            busy.add(backfill.data_flow_id)  # one at a time, across backfills too
            runs.append(run)
    return runs


def _next_run(backfill: Backfill, now: datetime) -> DataFlowRun | None:
    """Skip the slots that already succeeded (unless rerun); start the next one, if any."""
    data_flow = backfill.data_flow
    cursor = backfill.next_slot
    succeeded: set[datetime | None] = set()
    if cursor is not None and not backfill.rerun:
        succeeded = set(
            data_flow.runs.filter(
                status=RunStatus.SUCCESS, scheduled_for__gte=cursor, scheduled_for__lt=backfill.end
            ).values_list("scheduled_for", flat=True)
        )
    run = None
    slots = schedule_slots(data_flow, cursor, backfill.end) if cursor is not None else iter(())
    for slot in slots:
        if run is not None:
            backfill.next_slot = slot
            break
        backfill.done += 1
        if slot in succeeded:
            continue
        run = DataFlowRun(
            data_flow=data_flow,
            status=RunStatus.PENDING,
            trigger=RunTrigger.BACKFILL,
            scheduled_for=slot,
            backfill=backfill,
            queue=data_flow.effective_queue,
            created_at=now,
            activated_at=now,
        )
    else:
        backfill.next_slot = None
    if run is not None:
        try:
            with transaction.atomic():
                run.save(force_insert=True)
        except IntegrityError:  # the flow got an active run meanwhile: next time
            return None
        DataFlow.objects.filter(pk=data_flow.pk).update(
            last_run_at=now, last_run_status=RunStatus.PENDING
        )
    fields = ["next_slot", "done"]
    if run is None and backfill.next_slot is None:
        backfill.status = BackfillStatus.DONE
        backfill.ended_at = now
        fields += ["status", "ended_at"]
    backfill.save(update_fields=fields)
    return run
