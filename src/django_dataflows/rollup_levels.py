"""Coarser rollup levels: the hourly rollups folded into days, and into all flows together.

The triggers keep one row per flow and hour (:mod:`django_dataflows.rollup_sql`): a flow
that runs hourly has a row per run, so statistics over a long window, or over every flow,
would read as many rows as there were runs. Three coarser levels answer them in few rows:

- one flow's day (``span`` 24, ``flow_id`` the flow);
- all flows' hour (``span`` 1, ``flow_id`` 0) and day (``span`` 24, ``flow_id`` 0).

They are written by the fold (:func:`django_dataflows.rollups.fold_rollups`, run by the
heartbeat), never by the triggers, so a run costs no more writes than before. The triggers
mark each hourly row they write ``changed``; the fold recomputes the levels of the hours and
days with a changed row, then clears the mark. A statistic reads the levels only where they
are current: a day with a changed hour is read from the hourly rows of the flows in scope,
an hour with a changed row from the hourly rows, so answers are exact between folds too.

This module builds the statements; it knows no model. Every statement is built from the
constants of this module and :mod:`~django_dataflows.rollup_sql`; none takes user input.
"""

# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from django_dataflows.rollup_sql import BUCKETS, COUNT_COLUMNS, ROLLUPS, cost_columns

LEVELS = "dataflows_runrolluplevel"
LEVEL_BUCKETS = "dataflows_runbucketlevel"
HOUR = 1
DAY = 24
#: The ``flow_id`` of the rows of all flows together.
ALL_FLOWS = 0
#: The columns a level adds up (minimum and maximum aside).
SUMMED = (*COUNT_COLUMNS, "rated", "duration_sum", *cost_columns())
#: With more hours than this left to fold (the heartbeat has not run for days, or a rebuild
#: has just finished), statistics read the hourly rollups alone, as before the levels.
MAX_CHANGED_HOURS = 72

Part = tuple[str, list[Any]]


def day_of(moment: datetime) -> datetime:
    """The start of the UTC day ``moment`` falls in."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def first_whole_day(moment: datetime) -> datetime:
    """The first UTC day starting at or after ``moment``."""
    day = day_of(moment)
    return day if day == moment else day + timedelta(days=1)


def _stat_columns(flow: str, per_flow: bool) -> str:
    group = flow if per_flow else "0"
    return (
        f"{group}, 0, 0, 0, "
        + ", ".join(f"SUM({column})" for column in COUNT_COLUMNS)
        + ", SUM(rated), SUM(duration_sum), MIN(duration_min), MAX(duration_max), "
        + ", ".join(f"SUM({column})" for column in cost_columns())
    )


def _bucket_columns(flow: str, per_flow: bool) -> str:
    return f"{flow if per_flow else '0'}, bucket, SUM(count)"


def _group_by(flow: str, per_flow: bool, buckets: bool) -> str:
    keys = [flow] if per_flow else []
    if buckets:
        keys.append("bucket")
    return f" GROUP BY {', '.join(keys)}" if keys else ""


def _in(column: str, values: Iterable[Any], adapt: Callable[[Any], Any]) -> Part:
    values = list(values)
    return f"{column} IN ({', '.join(['%s'] * len(values))})", [adapt(v) for v in values]


def _ranges(
    column: str, ranges: list[tuple[datetime, datetime]], adapt: Callable[[Any], Any]
) -> Part:
    sql = " OR ".join(f"({column} >= %s AND {column} < %s)" for _range in ranges)
    return f"({sql})", [adapt(moment) for low, high in ranges for moment in (low, high)]


def window_parts(
    *,
    buckets: bool,
    per_flow: bool,
    flows: Iterable[int] | None,
    whole_from: datetime | None,
    changed: list[datetime] | None,
    adapt: Callable[[Any], Any],
) -> list[Part]:
    """The selects whose rows add up to the rollups of the whole hours from ``whole_from``.

    Rows are ``(group, 0, 0, 0, counts…, rated, duration sum, min, max, costs…)`` or, with
    ``buckets``, ``(group, bucket, count)``; ``group`` is the flow id with ``per_flow``,
    else 0. ``flows`` limits them to some flows (``None``: every flow); ``changed`` are the
    hours with a changed hourly row (``None``: read the hourly rows alone).
    """
    hourly, level = (BUCKETS, LEVEL_BUCKETS) if buckets else (ROLLUPS, LEVELS)
    columns = _bucket_columns if buckets else _stat_columns
    flow_ids = None if flows is None else sorted(flows)

    def flow_filter(column: str) -> Part:
        if flow_ids is None:
            return "", []
        sql, params = _in(column, flow_ids, int)
        return f" AND {sql}", params

    def select(table: str, flow: str, where: list[Part]) -> Part:
        conditions = " AND ".join(sql for sql, _params in where) or "1 = 1"
        return (
            f"SELECT {columns(flow, per_flow)} FROM {table} WHERE {conditions}"
            f"{_group_by(flow, per_flow, buckets)}",
            [param for _sql, params in where for param in params],
        )

    hourly_flows = flow_filter("data_flow_id")
    since_hour: list[Part] = [] if whole_from is None else [("hour >= %s", [adapt(whole_from)])]
    if changed is None:
        sql, params = hourly_flows
        return [select(hourly, "data_flow_id", [("1 = 1" + sql, params), *since_hour])]
    all_flows = flow_ids is None and not per_flow
    whole_days_from = None if whole_from is None else first_whole_day(whole_from)
    changed_days = sorted({day_of(hour) for hour in changed})
    # Whole days from the day level, but for the days with a changed hour.
    day_where: list[Part] = [(f"span = {DAY}", [])]
    if all_flows:
        day_where.append((f"flow_id = {ALL_FLOWS}", []))
    else:
        sql, params = flow_filter("flow_id")
        day_where.append((f"flow_id <> {ALL_FLOWS}{sql}", params))
    if whole_days_from is not None:
        day_where.append(("start >= %s", [adapt(whole_days_from)]))
    if changed_days:
        sql, params = _in("start", changed_days, adapt)
        day_where.append((f"NOT {sql}", params))
    parts = [select(level, "flow_id", day_where)]
    # The hours no day row answers: those before the first whole day, and changed days.
    ranges = []
    if whole_from is not None and whole_days_from is not None and whole_from < whole_days_from:
        ranges.append((whole_from, whole_days_from))
    ranges += [
        (day, day + timedelta(days=1))
        for day in changed_days
        if whole_days_from is None or day >= whole_days_from
    ]
    if not ranges:
        return parts
    if not all_flows:
        sql, params = hourly_flows
        parts.append(
            select(
                hourly, "data_flow_id", [("1 = 1" + sql, params), _ranges("hour", ranges, adapt)]
            )
        )
        return parts
    # All flows: unchanged hours from the all-flows hour level, changed ones from the rows.
    hour_where = [(f"span = {HOUR} AND flow_id = {ALL_FLOWS}", []), _ranges("start", ranges, adapt)]
    in_ranges = [hour for hour in changed if any(low <= hour < high for low, high in ranges)]
    if in_ranges:
        sql, params = _in("start", in_ranges, adapt)
        hour_where.append((f"NOT {sql}", params))
        parts.append(select(hourly, "data_flow_id", [_in("hour", in_ranges, adapt)]))
    parts.insert(1, select(level, "flow_id", hour_where))
    return parts


# -- the fold ------------------------------------------------------------------------------


def _sums(prefix: str = "") -> str:
    return ", ".join(f"SUM({prefix}{column})" for column in SUMMED)


def fold_statements(vendor: str) -> list[str]:
    """The statements folding one day's changed hourly rows into the levels.

    Named parameters: ``start`` and ``end`` of the day. The hours and flows recomputed are
    those with a changed row in the day; the caller clears the marks afterwards (of the
    rows it locked, on PostgreSQL, so a mark set meanwhile stays for the next fold).
    """
    in_day = "hour >= %(start)s AND hour < %(end)s"
    level_in_day = "start >= %(start)s AND start < %(end)s"
    changed_hours = f"SELECT hour FROM {ROLLUPS} WHERE changed AND {in_day}"
    changed_flows = f"SELECT data_flow_id FROM {ROLLUPS} WHERE changed AND {in_day}"
    day = "CAST(%(start)s AS TIMESTAMP WITH TIME ZONE)" if vendor == "postgresql" else "%(start)s"
    into = f"(span, flow_id, start, {', '.join(SUMMED)}, duration_min, duration_max)"
    sums = f"{_sums()}, MIN(duration_min), MAX(duration_max)"
    buckets_into = "(span, flow_id, start, bucket, count)"
    return [
        # One flow's day, for the flows with a changed hour that day.
        f"DELETE FROM {LEVELS} WHERE span = {DAY} AND {level_in_day} "
        f"AND flow_id IN ({changed_flows})",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {DAY} AND {level_in_day} "
        f"AND flow_id IN ({changed_flows})",
        f"INSERT INTO {LEVELS} {into} SELECT {DAY}, data_flow_id, {day}, {sums} "
        f"FROM {ROLLUPS} WHERE {in_day} AND data_flow_id IN ({changed_flows}) "
        "GROUP BY data_flow_id",
        f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} "
        f"SELECT {DAY}, data_flow_id, {day}, bucket, SUM(count) FROM {BUCKETS} "
        f"WHERE {in_day} AND data_flow_id IN ({changed_flows}) "
        "GROUP BY data_flow_id, bucket HAVING SUM(count) <> 0",
        # All flows' changed hours.
        f"DELETE FROM {LEVELS} WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} "
        f"AND {level_in_day} AND start IN ({changed_hours})",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} "
        f"AND {level_in_day} AND start IN ({changed_hours})",
        f"INSERT INTO {LEVELS} {into} SELECT {HOUR}, {ALL_FLOWS}, hour, {sums} "
        f"FROM {ROLLUPS} WHERE {in_day} AND hour IN ({changed_hours}) GROUP BY hour",
        f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} "
        f"SELECT {HOUR}, {ALL_FLOWS}, hour, bucket, SUM(count) FROM {BUCKETS} "
        f"WHERE {in_day} AND hour IN ({changed_hours}) GROUP BY hour, bucket "
        "HAVING SUM(count) <> 0",
        # All flows' day, from its hours.
        f"DELETE FROM {LEVELS} WHERE span = {DAY} AND flow_id = {ALL_FLOWS} AND {level_in_day}",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {DAY} AND flow_id = {ALL_FLOWS} "
        f"AND {level_in_day}",
        f"INSERT INTO {LEVELS} {into} SELECT {DAY}, {ALL_FLOWS}, {day}, {sums} FROM {LEVELS} "
        f"WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} AND {level_in_day} "
        "HAVING COUNT(*) > 0",
        f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} "
        f"SELECT {DAY}, {ALL_FLOWS}, {day}, bucket, SUM(count) FROM {LEVEL_BUCKETS} "
        f"WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} AND {level_in_day} "
        "GROUP BY bucket HAVING SUM(count) <> 0",
    ]


def changed_rows_statement(vendor: str) -> str:
    """The ids of a day's changed hourly rows, locked on PostgreSQL until the fold ends."""
    lock = " FOR UPDATE" if vendor == "postgresql" else ""
    return f"SELECT id FROM {ROLLUPS} WHERE changed AND hour >= %(start)s AND hour < %(end)s{lock}"


def _plus_day(vendor: str, column: str) -> str:
    if vendor == "postgresql":
        return f"({column} + INTERVAL '1 day')"
    return f"datetime({column}, '+1 day')"


def forget_flow_statements(vendor: str) -> list[str]:
    """Take a flow out of the levels before it is deleted (named parameter ``flow``).

    Run after a fold, so the levels hold exactly its hourly rows: the all-flows hours lose
    its hourly rows, the all-flows days its days (counts, sums and buckets; a shortest or
    longest duration that was its own stays, as for pruned runs); then its days go.
    """

    def subtract(source: str, flow: str, period: str, span: int) -> str:
        return ", ".join(
            f"{column} = {column} - COALESCE((SELECT SUM(s.{column}) FROM {source} s "
            f"WHERE s.{flow} = %(flow)s AND s.{period} = {LEVELS}.start"
            f"{f' AND s.span = {span}' if source == LEVELS else ''}), 0)"
            for column in SUMMED
        )

    def subtract_buckets(source: str, flow: str, period: str, span: int) -> str:
        return (
            f"count = count - COALESCE((SELECT SUM(s.count) FROM {source} s "
            f"WHERE s.{flow} = %(flow)s AND s.{period} = {LEVEL_BUCKETS}.start "
            f"AND s.bucket = {LEVEL_BUCKETS}.bucket"
            f"{f' AND s.span = {span}' if source == LEVEL_BUCKETS else ''}), 0)"
        )

    hours = f"SELECT hour FROM {ROLLUPS} WHERE data_flow_id = %(flow)s"
    days = f"SELECT start FROM {LEVELS} WHERE span = {DAY} AND flow_id = %(flow)s"
    all_hours = f"flow_id = {ALL_FLOWS} AND span = {HOUR}"
    all_days = f"flow_id = {ALL_FLOWS} AND span = {DAY}"
    return [
        f"UPDATE {LEVELS} SET {subtract(ROLLUPS, 'data_flow_id', 'hour', HOUR)} "
        f"WHERE {all_hours} AND start IN ({hours})",
        f"UPDATE {LEVEL_BUCKETS} SET {subtract_buckets(BUCKETS, 'data_flow_id', 'hour', HOUR)} "
        f"WHERE {all_hours} AND start IN ({hours})",
        f"UPDATE {LEVELS} SET {subtract(LEVELS, 'flow_id', 'start', DAY)} "
        f"WHERE {all_days} AND start IN ({days})",
        f"UPDATE {LEVEL_BUCKETS} SET {subtract_buckets(LEVEL_BUCKETS, 'flow_id', 'start', DAY)} "
        f"WHERE {all_days} AND start IN ({days})",
        # Shortest and longest again, from the other flows' hours, then from those hours.
        f"UPDATE {LEVELS} SET "
        + ", ".join(
            f"duration_{extreme} = (SELECT {extreme.upper()}(r.duration_{extreme}) "
            f"FROM {ROLLUPS} r WHERE r.hour = {LEVELS}.start AND r.data_flow_id <> %(flow)s)"
            for extreme in ("min", "max")
        )
        + f" WHERE {all_hours} AND start IN ({hours})",
        f"UPDATE {LEVELS} SET "
        + ", ".join(
            f"duration_{extreme} = (SELECT {extreme.upper()}(h.duration_{extreme}) "
            f"FROM {LEVELS} h WHERE h.span = {HOUR} AND h.flow_id = {ALL_FLOWS} "
            f"AND h.start >= {LEVELS}.start AND h.start < {_plus_day(vendor, f'{LEVELS}.start')})"
            for extreme in ("min", "max")
        )
        + f" WHERE {all_days} AND start IN ({days})",
        f"DELETE FROM {LEVELS} WHERE flow_id = %(flow)s",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE flow_id = %(flow)s",
    ]
