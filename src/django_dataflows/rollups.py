"""Recomputing the run rollups from the runs (``dataflows_rollups --rebuild``).

The triggers of :mod:`django_dataflows.rollup_sql` keep the rollups as runs change; a
rebuild is for a database where they were off (a bulk load with triggers disabled, a
restore) or to check them. It works a few flows at a time, each group in its own short
transaction, so a rebuild stopped halfway leaves every flow either rebuilt or as it was,
and running it again gives the same rollups. Runs already pruned cannot be read again: a
rebuild drops their contribution (``--since`` keeps the hours before it as they are).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction

import django_dataflows.rollup_levels as rollup_levels
import django_dataflows.rollup_sql as rollup_sql
from django_dataflows.models import (
    ROLLUP_VENDORS,
    DataFlow,
    RunBucketLevel,
    RunDurationBucket,
    RunRollup,
    RunRollupLevel,
)

logger = logging.getLogger(__name__)

#: Flows recomputed per transaction: few enough that each holds its lock briefly.
FLOWS_PER_TRANSACTION = 20


class RollupsUnsupported(Exception):
    """The database has no rollup triggers (only PostgreSQL and SQLite have them)."""


def rebuild_rollups(
    flow_ids: Iterable[int] | None = None,
    *,
    since: datetime | None = None,
    using: str = "default",
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Recompute the rollups of these flows (all by default) from their runs.

    With ``since``, only the hours from the one ``since`` falls in are recomputed. Works
    through ``FLOWS_PER_TRANSACTION`` flows per transaction, calling ``progress(done,
    total)`` after each; returns the number of flows rebuilt. On PostgreSQL each
    transaction holds a ``SHARE`` lock on the run table, so no run changes between reading
    the runs and writing their rollups (writers wait for those flows' rebuild only).
    """
    connection = connections[using]
    vendor = connection.vendor
    if vendor not in ROLLUP_VENDORS:
        raise RollupsUnsupported(f"Run rollups need PostgreSQL or SQLite, not {vendor}.")
    flows = DataFlow.objects.using(using).order_by("pk")
    if flow_ids is not None:
        flows = flows.filter(pk__in=list(flow_ids))
    ids = list(flows.values_list("pk", flat=True))
    hour = None if since is None else since.replace(minute=0, second=0, microsecond=0)
    done = 0
    for start in range(0, len(ids), FLOWS_PER_TRANSACTION):
        chunk = ids[start : start + FLOWS_PER_TRANSACTION]
        statements = rollup_sql.rebuild_statements(
            vendor, flows=len(chunk), from_hour=hour is not None
        )
        with transaction.atomic(using=using):
            if vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(f"LOCK TABLE {rollup_sql.RUNS} IN SHARE MODE")
            for model in (RunRollup, RunDurationBucket):
                old = model.objects.using(using).filter(data_flow_id__in=chunk)
                if hour is not None:
                    old = old.filter(hour__gte=hour)
                old.delete()
            params: list[Any] = list(chunk)
            if hour is not None:
                params.append(connection.ops.adapt_datetimefield_value(hour))
            with connection.cursor() as cursor:
                for sql in statements:
                    cursor.execute(sql, params)
        done += len(chunk)
        if progress is not None:
            progress(done, len(ids))
    refold_levels(since=hour, using=using)
    return len(ids)


#: The days one heartbeat folds at most: today and yesterday, and a few the heartbeat missed.
FOLD_DAYS_PER_HEARTBEAT = 3


def fold_rollups(
    *,
    days: int | None = None,
    using: str = "default",
    progress: Callable[[datetime], None] | None = None,
) -> int:
    """Fold the changed hourly rollups into the coarser levels, oldest day first.

    See :mod:`django_dataflows.rollup_levels`. At most ``days`` days (all by default), each
    in its own short transaction; returns the number of days folded. The heartbeat calls
    it, so the levels trail the hourly rows by about a minute; statistics stay exact
    meanwhile (they read the hourly rows of whatever is not folded yet).
    """
    connection = connections[using]
    if connection.vendor not in ROLLUP_VENDORS:
        return 0
    changed = RunRollup.objects.using(using).filter(changed=True)
    statements = rollup_levels.fold_statements(connection.vendor)
    folded = 0
    after: datetime | None = None
    while days is None or folded < days:
        pending = changed if after is None else changed.filter(hour__gte=after)
        oldest = pending.order_by("hour").values_list("hour", flat=True).first()
        if oldest is None:
            break
        start = rollup_levels.day_of(oldest)
        after = start + timedelta(days=1)
        params: dict[str, Any] = {
            "start": connection.ops.adapt_datetimefield_value(start),
            "end": connection.ops.adapt_datetimefield_value(after),
            "epoch": connection.ops.adapt_datetimefield_value(rollup_levels.ALL_TIME_START),
        }
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(rollup_levels.changed_rows_statement(connection.vendor), params)
            rows = cursor.fetchall()
            ids = [row[0] for row in rows]
            if connection.vendor == "postgresql":  # SQLite's statements select them
                params.update(ids=ids, flows=sorted({row[1] for row in rows}))
            for sql in statements:
                cursor.execute(sql, params)
            # Only the rows read under the lock: a row changed meanwhile stays marked.
            for first in range(0, len(ids), 500):
                RunRollup.objects.using(using).filter(pk__in=ids[first : first + 500]).update(
                    changed=False
                )
        folded += 1
        if progress is not None:
            progress(start)
    return folded


def fold_for_heartbeat(using: str = "default") -> None:
    """The heartbeat's fold: a few days at most; an error is logged, never raised."""
    try:
        fold_rollups(days=FOLD_DAYS_PER_HEARTBEAT, using=using)
    except Exception:
        logger.exception("Folding the run rollups failed; the next heartbeat tries again")


def refold_levels(*, since: datetime | None = None, using: str = "default") -> None:
    """Recompute every level from the hourly rollups (from ``since``'s day on), then fold.

    After a rebuild, hourly rows may be gone that the levels still count.
    """
    day = None if since is None else rollup_levels.day_of(since)
    with transaction.atomic(using=using):
        for model in (RunRollupLevel, RunBucketLevel):
            old = model.objects.using(using).all()
            if day is not None:
                old = old.filter(start__gte=day)
            old.delete()
        hourly = RunRollup.objects.using(using).filter(changed=False)
        if day is not None:
            hourly = hourly.filter(hour__gte=day)
        hourly.update(changed=True)
    fold_rollups(using=using)
    # A flow whose recomputed hours are all gone has none changed: its history again too.
    epoch = connections[using].ops.adapt_datetimefield_value(rollup_levels.ALL_TIME_START)
    every_flow = f"flow_id IN (SELECT id FROM {DataFlow._meta.db_table})"  # noqa: S608
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        for sql in rollup_levels.all_time_statements(every_flow):
            cursor.execute(sql, {"epoch": epoch})


def forget_flow(sender: Any, instance: DataFlow, using: str = "default", **kwargs: Any) -> None:
    """Take a flow about to be deleted out of the levels (``pre_delete`` of a flow).

    Its hourly rollups go with it (a foreign key); the levels of all flows lose what it
    added, in the delete's transaction.
    """
    connection = connections[using]
    if connection.vendor not in ROLLUP_VENDORS:
        return
    fold_rollups(using=using)
    with connection.cursor() as cursor:
        for sql in rollup_levels.forget_flow_statements(connection.vendor):
            cursor.execute(sql, {"flow": instance.pk})


def restore_dropped_triggers(using: str = "default", **kwargs: Any) -> None:
    """Create the rollup triggers again where a later migration dropped them (SQLite).

    SQLite rebuilds a table for many schema changes (a new ``NOT NULL`` column, an altered
    field), and the rebuild drops the table's triggers. Connected to ``post_migrate``: a
    migration that rebuilds the run table leaves statistics kept all the same. PostgreSQL
    keeps its triggers through ``ALTER TABLE``.
    """
    connection = connections[using]
    if connection.vendor != "sqlite":
        return
    tables = connection.introspection.table_names()
    if rollup_sql.ROLLUPS not in tables or rollup_sql.RUNS not in tables:
        return  # before migration 0008
    with connection.cursor() as cursor:
        columns = {
            column.name
            for column in connection.introspection.get_table_description(cursor, rollup_sql.ROLLUPS)
        }
        # Migrated only part of the way: the triggers of the rollups that are there.
        costs = set(rollup_sql.cost_columns()) <= columns
        create, _drop = rollup_sql.trigger_statements("sqlite", costs=costs)
        for sql in create:  # CREATE TRIGGER IF NOT EXISTS
            cursor.execute(sql)
