"""The heartbeat: claim due flows exactly once, dispatch their runs, reap stuck runs.

Any number of servers may run a heartbeat at the same moment. Due flows are selected with
``SELECT … FOR UPDATE SKIP LOCKED``, so each due flow row is claimed by exactly one
heartbeat; the claim creates the pending runs and advances the schedules in the same short
transaction, and the runs are handed to the backend only after it commits. The unique
constraint on (``data_flow``, ``scheduled_for``) backs this up on databases without row locks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models.expressions import DatabaseDefault

import django_dataflows.signals as signals
from django_dataflows.backfills import next_backfill_runs
from django_dataflows.clock import database_now
from django_dataflows.conf import app_settings
from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    Heartbeat,
    RunStatus,
    RunTrigger,
    announce_runs_changed,
)
from django_dataflows.pipelines import (
    dependency_neighbours,
    next_generations,
    ready_flows,
    record_generations,
)
from django_dataflows.rollups import fold_for_heartbeat
from django_dataflows.runs.bookkeeping import advance_claimed, next_after_claim
from django_dataflows.runs.execution import RunExecutor
from django_dataflows.runs.starting import dispatch_many
from django_dataflows.schedules import Catchup, InvalidSchedule

logger = logging.getLogger("django_dataflows.heartbeat")


@dataclass
class Claim:
    """What one claim took: the runs it created and the due flows it passed over."""

    runs: list[DataFlowRun]
    flows_due: int
    flows_skipped: int


@dataclass
class HeartbeatResult:
    """The counts a heartbeat answers with."""

    timestamp: datetime
    flows_due: int = 0
    flows_triggered: int = 0
    flows_skipped: int = 0
    flows_failed: int = 0
    runs_timed_out: int = 0
    #: Enabled flows with ``alert_after`` and no successful run for that long.
    flows_overdue: int = 0
    #: Pending runs no worker started within PICKUP_TIMEOUT, handed to the backend again.
    runs_redelivered: int = 0
    #: Runs ended ``failed`` after MAX_REDELIVERIES redeliveries nobody picked up.
    runs_never_picked_up: int = 0
    #: Runs the backend refused (broker down): the heartbeat answers 503.
    enqueue_failures: int = 0
    run_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        del data["run_ids"]
        return data


#: The flow columns a heartbeat reads: its schedule, what a backend needs to hand a run
#: over (name, queue, timeout, retries) and whom to tell if it refuses (alert_emails).
#: Every other column is left out of the claim's query (reading and converting them all cost
#: as much as the claim's SQL for 1,000 flows; ``bench/heartbeat.py``); one still loads when
#: something asks for it, one query a flow.
CLAIM_FIELDS = (
    "name",
    "next_run_at",
    "run_interval",
    "cron",
    "timezone",
    "queue",
    "timeout",
    "max_retries",
    "alert_emails",
    "catchup",
    "wait_for",
    "upstream_generation",
    "in_pipeline",
)


def claim_due_flows(now: datetime | None = None, batch_size: int | None = None) -> Claim:
    """Create the pending runs of due flows and of ready downstream flows; advance schedules.

    Must run inside a transaction (the row locks last until it commits). On PostgreSQL
    the number of SQL statements does not depend on the number of due flows (five, with
    nothing skipped and no downstream flow ready; at most ten); elsewhere ``bulk_create``
    and ``bulk_update`` split a large batch into as many statements as the database's
    parameter limit requires.
    """
    now = now or database_now()
    batch_size = batch_size or app_settings.HEARTBEAT_BATCH_SIZE
    due = list(_locked(DataFlow.objects.due_to_run(now)).order_by("next_run_at", "pk")[:batch_size])
    ready = list(_locked(ready_flows()).order_by("pk")[:batch_size])
    return _claim(due, ready, now)


def claim_ready_flows(flow_ids: list[int], now: datetime) -> Claim:
    """Create the pending runs of those of ``flow_ids`` whose upstream flows are ready.

    Inside a transaction, as :func:`claim_due_flows`; a flow another claim holds is left
    to it (or to the next heartbeat).
    """
    ready = list(_locked(ready_flows(flow_ids)).order_by("pk"))
    return _claim([], ready, now)


def _locked(flows: Any) -> Any:
    features = connection.features
    return flows.only(*CLAIM_FIELDS).select_for_update(
        skip_locked=True, no_key=features.has_select_for_no_key_update
    )


def _claim(due: list[DataFlow], ready: list[DataFlow], now: datetime) -> Claim:
    busy = set(
        DataFlowRun.objects.active()
        .filter(data_flow__in={flow.pk for flow in (*due, *ready)})
        .values_list("data_flow_id", flat=True)
    )
    claimed = []
    late: list[DataFlow] = []
    next_slots: dict[int, datetime] = {}
    for flow in due:
        if flow.pk in busy:
            continue
        try:
            next_slots[flow.pk] = next_after_claim(flow, flow.next_run_at or now, now)
        except InvalidSchedule as exc:
            # Stored without validation: skip it (it stays due, so this repeats each
            # heartbeat until someone fixes it) rather than fail the other flows.
            logger.error("Data flow %r skipped: its schedule is invalid: %s", flow.name, exc)
            continue
        if _too_late(flow, now):
            late.append(flow)
            continue
        claimed.append(flow)
    if late:
        _drop_late_slots(late, next_slots)
    # A flow claimed for its slot now has an active run: its generation waits for it.
    taken = busy | {flow.pk for flow in claimed}
    generations = next_generations([flow for flow in ready if flow.pk not in taken], now)
    runs = _scheduled_runs(claimed, now) + [generation.run for generation in generations]
    if runs:
        runs = _insert_runs(runs)
        # Inserted in one statement, not through save(): announce them to live status.
        announce_runs_changed([run.pk for run in runs], connection.alias)
        # Only the flows whose run was inserted move on: a flow that got an active run
        # elsewhere meanwhile keeps the schedule (and the status) that run gave it.
        inserted = {run.data_flow_id for run in runs}
        advance_claimed(
            [run.data_flow for run in runs if run.trigger == RunTrigger.SCHEDULE],
            now,
            next_slots,
        )
        record_generations(
            [generation for generation in generations if generation.run.data_flow_id in inserted],
            now,
        )
    # A flow whose run could not be inserted got an active run from elsewhere meanwhile.
    considered = len(due) + len(ready)
    return Claim(runs=runs, flows_due=considered, flows_skipped=considered - len(runs) - len(late))


def _too_late(flow: DataFlow, now: datetime) -> bool:
    """Is this a ``catchup="skip"`` flow whose slot is more than ``CATCHUP_GRACE`` late?"""
    if flow.catchup != Catchup.SKIP or flow.next_run_at is None:
        return False
    return (now - flow.next_run_at).total_seconds() > app_settings.CATCHUP_GRACE


def _drop_late_slots(flows: list[DataFlow], next_slots: dict[int, datetime]) -> None:
    """Move late ``catchup="skip"`` flows to their next slot in the future, without a run."""
    for flow in flows:
        logger.info(
            "Data flow %r: slot %s dropped (more than %gs late; catchup is skip)",
            flow.name,
            flow.next_run_at.isoformat() if flow.next_run_at else None,
            app_settings.CATCHUP_GRACE,
        )
        flow.next_run_at = next_slots[flow.pk]
    DataFlow.objects.bulk_update(flows, ["next_run_at"])


def _scheduled_runs(flows: list[DataFlow], now: datetime) -> list[DataFlowRun]:
    """A new pending run of each flow for its due slot, not saved yet.

    The same instances ``DataFlowRun(data_flow=flow, ...)`` builds, but from positional
    values, as the ORM builds the rows it reads: built by keyword, each run looks up the
    default of every field, which for a thousand runs took as long as the claim's SQL
    (``bench/heartbeat.py``). Defaults that are callables (a task id, an empty dict) are
    called for each run; the others are taken once.
    """
    fields = DataFlowRun._meta.concrete_fields
    column = {model_field.attname: index for index, model_field in enumerate(fields)}
    given = {
        "status": RunStatus.PENDING.value,
        "trigger": RunTrigger.SCHEDULE.value,
        "created_at": now,
        "activated_at": now,
    }
    per_flow = ("data_flow_id", "scheduled_for", "queue")
    values: list[Any] = [
        given.get(model_field.attname, model_field.get_default()) for model_field in fields
    ]
    per_run = [
        (index, model_field)
        for index, model_field in enumerate(fields)
        if model_field.has_default()
        and callable(model_field.default)
        and model_field.attname not in {*given, *per_flow}
    ]
    flow_at, slot_at, queue_at = column["data_flow_id"], column["scheduled_for"], column["queue"]
    cache_flow = DataFlowRun.data_flow.field.set_cached_value
    runs = []
    for flow in flows:
        for index, model_field in per_run:
            values[index] = model_field.get_default()
        values[flow_at], values[slot_at] = flow.pk, flow.next_run_at
        values[queue_at] = flow.effective_queue
        run = DataFlowRun(*values)  # type: ignore[misc,unused-ignore]  # stubs take *values for the pk
        cache_flow(run, flow)
        runs.append(run)
    return runs


#: Columns whose value differs from one claimed run to the next; every other column gets
#: the first run's value (a callable default, such as ``task_id``'s, is per row too).
_PER_ROW_FIELDS = frozenset({"data_flow", "scheduled_for", "queue", "trigger", "generation"})
#: Field types whose Python values psycopg takes as they are (the claim's datetimes are
#: aware, from the database or timezone.now()).
_READY_TYPES = frozenset({"ForeignKey", "CharField", "TextField", "DateTimeField"})


def _insert_runs(runs: list[DataFlowRun]) -> list[DataFlowRun]:
    """Insert the claimed runs (one per flow) in one statement; return those inserted.

    On PostgreSQL the values that differ per run go as one array per column (which spares
    ``bulk_create``'s per-field preparation of every row) and the others once each. The
    columns come from the model's ``_meta``, so a new field is inserted like the ORM would.
    A run that would break a unique constraint (a manual run of the same flow committed
    between our check and our insert) is left out rather than failing the whole claim.
    """
    first = runs[0]
    if connection.vendor != "postgresql":
        # ignore_conflicts returns no keys, so read back the rows this claim wrote.
        DataFlowRun.objects.bulk_create(runs, ignore_conflicts=True)
        # Each run's task id is new, so it finds that run and no other (two claims with
        # the same clock reading would both match a created_at).
        written = DataFlowRun.objects.filter(task_id__in=[run.task_id for run in runs]).values_list(
            "data_flow_id", "pk"
        )
        return _with_keys(runs, dict(written))
    columns: list[str] = []
    selected: list[str] = []
    arrays: list[str] = []
    array_params: list[list[Any]] = []
    params: list[Any] = []
    for model_field in DataFlowRun._meta.concrete_fields:
        if (
            model_field.primary_key
            or model_field.generated
            or isinstance(getattr(first, model_field.attname), DatabaseDefault)
        ):
            continue
        columns.append(connection.ops.quote_name(str(model_field.column)))
        if model_field.name in _PER_ROW_FIELDS or _has_callable_default(model_field):
            selected.append(f"claimed.c{len(arrays)}")
            arrays.append(f"%s::{model_field.db_type(connection)}[]")
            attname = model_field.attname
            if model_field.get_internal_type() in _READY_TYPES:
                # Keys, strings and aware datetimes go to psycopg as they are; preparing
                # each one through the field would cost more than the whole INSERT.
                array_params.append([getattr(run, attname) for run in runs])
            else:
                prepare = model_field.get_db_prep_save
                array_params.append([prepare(getattr(run, attname), connection) for run in runs])
        else:
            selected.append("%s")
            params.append(
                model_field.get_db_prep_save(getattr(first, model_field.attname), connection)
            )
    names = ", ".join(f"c{index}" for index in range(len(arrays)))
    # Identifiers from the model's _meta, quoted; every value is a parameter.
    table = connection.ops.quote_name(DataFlowRun._meta.db_table)
    sql = " ".join(
        (
            f"INSERT INTO {table} ({', '.join(columns)})",
            f"SELECT {', '.join(selected)}",
            f"FROM unnest({', '.join(arrays)}) AS claimed({names})",
            "ON CONFLICT DO NOTHING RETURNING id, data_flow_id",
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params + array_params)
        ids = {data_flow_id: pk for pk, data_flow_id in cursor.fetchall()}
    return _with_keys(runs, ids)


def _has_callable_default(model_field: Any) -> bool:
    # dict and list build the same empty value for every run; anything else may not.
    default = model_field.default
    return callable(default) and default not in (dict, list)


def _with_keys(runs: list[DataFlowRun], ids: dict[int, int]) -> list[DataFlowRun]:
    """The runs that were written, given their keys (one run per flow, so by flow id)."""
    inserted = [run for run in runs if run.data_flow_id in ids]
    for run in inserted:
        run.pk = ids[run.data_flow_id]
        run._state.adding = False
        run._state.db = connection.alias
    return inserted


def announce_overdue_flows(now: datetime) -> int:
    """Send ``flow_overdue`` once per overdue episode; return how many flows are overdue.

    Announcing stores the instant the episode began in ``overdue_episode_since`` with a
    conditional update, so one heartbeat announces it however many run at once; the next
    success clears it (``django_dataflows.alerts``), which ends the episode.
    """
    # Names in a tuple, not literals: django-stubs cannot see the annotation.
    columns = ("pk", "overdue_since", "overdue_episode_since")
    overdue = list(DataFlow.objects.overdue(now).values_list(*columns))
    # One query whatever the number of overdue flows; one more per flow just become overdue.
    starting = {pk: since for pk, since, announced in overdue if announced is None}
    for pk, since in starting.items():
        announced = DataFlow.objects.filter(pk=pk, overdue_episode_since__isnull=True).update(
            overdue_episode_since=since
        )
        data_flow = DataFlow.objects.filter(pk=pk).first() if announced else None
        if data_flow is None:  # another heartbeat announced it, or it was deleted
            continue
        logger.warning("Data flow %r is overdue since %s", data_flow.name, since.isoformat())
        for receiver, response in signals.flow_overdue.send_robust(
            sender=DataFlow, data_flow=data_flow, since=since
        ):
            if isinstance(response, Exception):
                logger.error(
                    "Receiver %r of flow_overdue failed",
                    receiver,
                    exc_info=(type(response), response, response.__traceback__),
                )
    return len(overdue)


def announce_late_runs(now: datetime) -> int:
    """Send ``run_late`` once for each run in progress past its flow's ``max_duration``.

    The run goes on: being late is news, not a failure. ``late_since`` is set by a
    conditional update, so one heartbeat announces a run however many run at once. Reads
    only the runs in progress of flows with a limit (at most one per flow).
    """
    candidates = DataFlowRun.objects.filter(
        status=RunStatus.IN_PROGRESS,
        late_since__isnull=True,
        data_flow__max_duration__isnull=False,
        started_at__isnull=False,
    ).values_list("pk", "started_at", "data_flow__max_duration")
    late = [
        pk
        for pk, started_at, limit in candidates
        if started_at is not None
        and limit is not None
        and (now - started_at).total_seconds() > limit
    ]
    announced = 0
    for pk in late:
        if not DataFlowRun.objects.filter(
            pk=pk, status=RunStatus.IN_PROGRESS, late_since__isnull=True
        ).update(late_since=now):
            continue  # another heartbeat announced it, or it ended meanwhile
        run = DataFlowRun.objects.select_related("data_flow").get(pk=pk)
        announced += 1
        logger.warning(
            "Run %s of data flow %r is late: in progress for longer than its max_duration (%ss)",
            run.pk,
            run.data_flow.name,
            run.data_flow.max_duration,
        )
        for receiver, response in signals.run_late.send_robust(sender=DataFlow, run=run, since=now):
            if isinstance(response, Exception):
                logger.error(
                    "Receiver %r of run_late failed",
                    receiver,
                    exc_info=(type(response), response, response.__traceback__),
                )
    return announced


def run_heartbeat(
    *, source: str = "http", client: str = "", now: datetime | None = None
) -> HeartbeatResult:
    """One heartbeat: reap stuck runs, take back lost ones, claim due flows, dispatch,
    announce overdue flows, record, signal.

    Every time here is the database's (one query): app servers whose clocks disagree
    claim the same flows at the same moments. ``now`` stands for that clock where the
    moment must be chosen (tests, a replay), as in :func:`claim_due_flows`.
    """
    now = now or database_now()
    result = HeartbeatResult(timestamp=now)
    # Reap first, so a flow freed from a lost run can be claimed by this same heartbeat.
    result.runs_timed_out = RunExecutor.time_out_stuck_runs(now)
    redelivery = RunExecutor.take_back_unclaimed_runs(now)
    result.runs_redelivered = len(redelivery.runs)
    result.runs_never_picked_up = redelivery.never_picked_up
    with transaction.atomic():
        claim = claim_due_flows(now)
        # A flow claimed for its slot is busy now: its backfill waits (one query).
        backfill_runs = next_backfill_runs(now)
    result.flows_due = claim.flows_due
    result.flows_skipped = claim.flows_skipped
    result.flows_triggered = len(claim.runs) + len(backfill_runs)
    runs = redelivery.runs + claim.runs + backfill_runs
    result.run_ids = [run.pk for run in runs]
    result.enqueue_failures = dispatch_many(runs)
    if runs:
        result.flows_failed = DataFlowRun.objects.filter(
            pk__in=result.run_ids, status__in=(RunStatus.FAILED, RunStatus.TIMED_OUT)
        ).count()
    result.flows_overdue = announce_overdue_flows(now)
    announce_late_runs(now)
    # Statistics of long windows and of all flows read the levels the fold keeps.
    fold_for_heartbeat()
    Heartbeat.record(received_at=now, source=source, client=client, result=result.as_dict())
    # The runs are committed and dispatched by now: a receiver's error is logged, never
    # turned into a failed heartbeat (which cron would report, and retry for nothing).
    for receiver, response in signals.heartbeat_finished.send_robust(
        sender=DataFlow, result=result
    ):
        if isinstance(response, Exception):
            logger.error(
                "Receiver %r of heartbeat_finished failed",
                receiver,
                exc_info=(type(response), response, response.__traceback__),
            )
    return result


# -- downstream flows start when their upstream flows succeed ------------------------------

_dispatching = threading.local()


def start_ready_downstream(sender: Any, run: DataFlowRun, status: str, **kwargs: Any) -> None:
    """``run_finished`` receiver: start the flows this run's end makes ready.

    A success may make the flow's downstream flows ready; any end frees the flow itself,
    whose own generation, or next backfill slot, may have waited for it. The heartbeat
    finds the same runs to start (this only starts them at once), so a flow another claim
    holds is left to it.
    """
    if status == RunStatus.FAILED and run.started_at is None:
        # Refused by the backend or never picked up: the transport is failing, and what the
        # run was for is due again. The heartbeat tries again; starting it here would only
        # be refused again, at once, for every slot of a backfill.
        return
    in_backfill = run.backfill_id is not None
    if not in_backfill and not getattr(run.data_flow, "in_pipeline", True):
        return  # no dependencies: nothing to look up (the worker's run costs no query)
    downstream, has_upstreams = dependency_neighbours(run.data_flow_id)
    candidates = downstream if status == RunStatus.SUCCESS else set()
    if has_upstreams:
        candidates.add(run.data_flow_id)
    if not candidates and not in_backfill:
        return
    now = database_now()
    runs: list[DataFlowRun] = []
    if candidates:
        with transaction.atomic():
            runs += claim_ready_flows(sorted(candidates), now).runs
    if in_backfill:
        # The backfill's next slot starts now rather than at the next heartbeat.
        with transaction.atomic():
            runs += next_backfill_runs(now, [run.data_flow_id])
    dispatch_in_turn(runs)


def dispatch_in_turn(runs: list[DataFlowRun]) -> None:
    """Hand ``runs`` to the backend; nested calls queue theirs for the outermost one.

    The sync backend runs a flow inside ``dispatch_many``, whose end may start the next
    flow of a chain here again: queuing keeps a chain of any length one loop, not a
    recursion as deep as the chain.
    """
    queued: list[DataFlowRun] | None = getattr(_dispatching, "queue", None)
    if queued is not None:
        queued.extend(runs)
        return
    _dispatching.queue = queued = list(runs)
    try:
        while queued:
            batch = queued[:]
            del queued[:]
            dispatch_many(batch)
    finally:
        _dispatching.queue = None
