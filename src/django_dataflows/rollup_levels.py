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
#: The ``span`` of a flow's whole history (its ``start`` is ``ALL_TIME_START``).
ALL_TIME = 0
ALL_TIME_START = datetime(1970, 1, 1, tzinfo=UTC)
#: The ``flow_id`` of the rows of all flows together.
ALL_FLOWS = 0
#: The columns a level adds up (minimum and maximum aside).
SUMMED = (*COUNT_COLUMNS, "rated", "duration_sum", *cost_columns())
#: With more hourly rows than this left to fold (the heartbeat has not run for a while, a
#: rebuild has just finished), statistics read the hourly rollups alone, as without levels.
MAX_CHANGED_ROWS = 10_000

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
    changed: list[tuple[int, datetime]] | None,
    adapt: Callable[[Any], Any],
) -> list[Part]:
    """The selects whose rows add up to the rollups of the whole hours from ``whole_from``.

    Rows are ``(group, 0, 0, 0, counts…, rated, duration sum, min, max, costs…)`` or, with
    ``buckets``, ``(group, bucket, count)``; ``group`` is the flow id with ``per_flow``,
    else 0. ``flows`` limits them to some flows (``None``: every flow); ``changed`` are the
    (flow, hour) of the hourly rows not folded since they changed (``None``: read the
    hourly rows alone).
    """
    hourly, level = (BUCKETS, LEVEL_BUCKETS) if buckets else (ROLLUPS, LEVELS)
    columns = _bucket_columns if buckets else _stat_columns
    flow_ids = None if flows is None else sorted(flows)

    def flow_filter(column: str) -> Part:
        if flow_ids is None:  # each flow's own rows, not those of all flows together
            return f"{column} <> {ALL_FLOWS}", []
        return _in(column, flow_ids, int)

    def select(table: str, flow: str, where: list[Part]) -> Part:
        return (
            f"SELECT {columns(flow, per_flow)} FROM {table} "
            f"WHERE {' AND '.join(sql for sql, _params in where)}"
            f"{_group_by(flow, per_flow, buckets)}",
            [param for _sql, params in where for param in params],
        )

    since_hour: list[Part] = [] if whole_from is None else [("hour >= %s", [adapt(whole_from)])]
    if changed is None:
        return [select(hourly, "data_flow_id", [flow_filter("data_flow_id"), *since_hour])]
    whole_days_from = None if whole_from is None else first_whole_day(whole_from)
    partial_day = (
        [(whole_from, whole_days_from)]
        if whole_from is not None and whole_days_from is not None and whole_from < whole_days_from
        else []
    )

    def after_partial_day(day: datetime) -> bool:
        return whole_days_from is None or day >= whole_days_from

    if flow_ids is None and not per_flow:
        return _all_flows_parts(
            select, hourly, level, changed, whole_days_from, partial_day, after_partial_day, adapt
        )
    in_scope = flow_ids is None or set(flow_ids)
    changed_days = sorted(
        {
            (flow, day_of(hour))
            for flow, hour in changed
            if (in_scope is True or flow in in_scope) and after_partial_day(day_of(hour))
        }
    )
    changed_flows = sorted({flow for flow, _day in changed_days})

    def pairs(flow: str, period: str, days: list[tuple[int, datetime]], span: bool) -> Part:
        """The rows of these (flow, day): a day's hours with ``span``, else its day row.

        One term per day with the list of its flows: a burst of thousands of flows that
        finished within the same minute is a few lists, not thousands of terms.
        """
        by_day: dict[datetime, list[int]] = {}
        for flow_id, day in days:
            by_day.setdefault(day, []).append(flow_id)
        terms, params = [], []
        for day, flow_ids in sorted(by_day.items()):
            within = f"{period} >= %s AND {period} < %s" if span else f"{period} = %s"
            in_sql, in_params = _in(flow, flow_ids, int)
            terms.append(f"({within} AND {in_sql})")
            params += [adapt(day)]
            if span:
                params.append(adapt(day + timedelta(days=1)))
            params += in_params
        return f"({' OR '.join(terms)})", params

    parts = []
    if whole_from is None:
        # The whole history: a flow's all-time row, or its days while some are changed.
        total_where = [(f"span = {ALL_TIME}", []), flow_filter("flow_id")]
        if changed_flows:
            sql, params = _in("flow_id", changed_flows, int)
            total_where.append((f"NOT {sql}", params))
            sql, params = _in("flow_id", changed_flows, int)
            day_where = [(f"span = {DAY}", []), (sql, params)]
            sql, params = pairs("flow_id", "start", changed_days, span=False)
            day_where.append((f"NOT {sql}", params))
            parts.append(select(level, "flow_id", day_where))
        parts.insert(0, select(level, "flow_id", total_where))
    else:
        day_where = [(f"span = {DAY}", []), flow_filter("flow_id")]
        if whole_days_from is not None:
            day_where.append(("start >= %s", [adapt(whole_days_from)]))
        if changed_days:
            sql, params = pairs("flow_id", "start", changed_days, span=False)
            day_where.append((f"NOT {sql}", params))
        parts.append(select(level, "flow_id", day_where))
    # The hours no day row answers: the partial first day, and the changed days.
    if partial_day:
        parts.append(
            select(
                hourly,
                "data_flow_id",
                [flow_filter("data_flow_id"), _ranges("hour", partial_day, adapt)],
            )
        )
    if changed_days:
        parts.append(
            select(hourly, "data_flow_id", [pairs("data_flow_id", "hour", changed_days, span=True)])
        )
    return parts


def _all_flows_parts(
    select: Callable[[str, str, list[Part]], Part],
    hourly: str,
    level: str,
    changed: list[tuple[int, datetime]],
    whole_days_from: datetime | None,
    partial_day: list[tuple[datetime, datetime]],
    after_partial_day: Callable[[datetime], bool],
    adapt: Callable[[Any], Any],
) -> list[Part]:
    """All flows together: days, then hours, of the all-flows levels; changed hours' rows."""
    changed_hours = sorted({hour for _flow, hour in changed})
    changed_days = sorted({day_of(hour) for hour in changed_hours})
    day_where: list[Part] = [(f"span = {DAY} AND flow_id = {ALL_FLOWS}", [])]
    if whole_days_from is not None:
        day_where.append(("start >= %s", [adapt(whole_days_from)]))
    if changed_days:
        sql, params = _in("start", changed_days, adapt)
        day_where.append((f"NOT {sql}", params))
    parts = [select(level, "flow_id", day_where)]
    ranges = partial_day + [
        (day, day + timedelta(days=1)) for day in changed_days if after_partial_day(day)
    ]
    if not ranges:
        return parts
    hour_where = [(f"span = {HOUR} AND flow_id = {ALL_FLOWS}", []), _ranges("start", ranges, adapt)]
    in_ranges = [hour for hour in changed_hours if any(low <= hour < high for low, high in ranges)]
    if in_ranges:
        sql, params = _in("start", in_ranges, adapt)
        hour_where.append((f"NOT {sql}", params))
    parts.append(select(level, "flow_id", hour_where))
    if in_ranges:
        parts.append(select(hourly, "data_flow_id", [_in("hour", in_ranges, adapt)]))
    return parts


# -- the fold ------------------------------------------------------------------------------


def _sums(prefix: str = "") -> str:
    return ", ".join(f"SUM({prefix}{column})" for column in SUMMED)


def fold_statements(vendor: str) -> list[str]:
    """The statements folding one day's changed hourly rows into the levels.

    Named parameters: ``start`` and ``end`` of the day, ``epoch``, and on PostgreSQL
    ``ids`` and ``flows``, the ids and flows of the changed rows
    :func:`changed_rows_statement` locked. The hours and flows recomputed are those of the
    changed rows; the caller clears their marks afterwards. On PostgreSQL the set is the
    locked rows, fixed for the whole fold: a row a worker marks meanwhile is neither in one
    statement's set and missing from the next one's, nor cleared (it is folded next time).
    SQLite lets no other writer in once the fold has written.

    On PostgreSQL the flows are an array, not a subquery: the level tables grow
    from nothing during a rebuild's fold, and a semi-join planned on their stale
    statistics read every changed flow's hourly rows once per bucket (ten minutes for one
    day of a 10,000,000-run history instead of seconds).
    """
    in_day = "hour >= %(start)s AND hour < %(end)s"
    level_in_day = "start >= %(start)s AND start < %(end)s"

    if vendor == "postgresql":

        def flows_in(column: str) -> str:
            return f"{column} = ANY(%(flows)s)"

        def hours_in(column: str) -> str:  # a day has at most 24: no plan goes wrong on them
            return f"{column} IN (SELECT hour FROM {ROLLUPS} WHERE id = ANY(%(ids)s))"

    else:
        changed = f"changed AND {in_day}"

        def flows_in(column: str) -> str:
            return f"{column} IN (SELECT data_flow_id FROM {ROLLUPS} WHERE {changed})"

        def hours_in(column: str) -> str:
            return f"{column} IN (SELECT hour FROM {ROLLUPS} WHERE {changed})"

    day = "CAST(%(start)s AS TIMESTAMP WITH TIME ZONE)" if vendor == "postgresql" else "%(start)s"
    into = f"(span, flow_id, start, {', '.join(SUMMED)}, duration_min, duration_max)"
    sums = f"{_sums()}, MIN(duration_min), MAX(duration_max)"
    buckets_into = "(span, flow_id, start, bucket, count)"

    def move_all_time_buckets(sign: str) -> str:
        """Add the changed flows' day buckets to (or take them from) their whole history."""
        return (
            f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} SELECT {ALL_TIME}, flow_id, %(epoch)s, "
            f"bucket, {sign}count FROM {LEVEL_BUCKETS} WHERE span = {DAY} AND {level_in_day} "
            f"AND {flows_in('flow_id')} ON CONFLICT (span, flow_id, start, bucket) "
            f"DO UPDATE SET count = {LEVEL_BUCKETS}.count + excluded.count"
        )

    return [
        # One flow's day, for the flows with a changed hour that day; the buckets of its
        # whole history move by the difference (reading them all again would cost a read of
        # every day of the flow's history).
        move_all_time_buckets("-"),
        f"DELETE FROM {LEVELS} WHERE span = {DAY} AND {level_in_day} AND {flows_in('flow_id')}",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {DAY} AND {level_in_day} "
        f"AND {flows_in('flow_id')}",
        f"INSERT INTO {LEVELS} {into} SELECT {DAY}, data_flow_id, {day}, {sums} "
        f"FROM {ROLLUPS} WHERE {in_day} AND {flows_in('data_flow_id')} "
        "GROUP BY data_flow_id",
        f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} "
        f"SELECT {DAY}, data_flow_id, {day}, bucket, SUM(count) FROM {BUCKETS} "
        f"WHERE {in_day} AND {flows_in('data_flow_id')} "
        "GROUP BY data_flow_id, bucket HAVING SUM(count) <> 0",
        move_all_time_buckets(""),
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {ALL_TIME} AND count = 0 "
        f"AND {flows_in('flow_id')}",
        # Their whole history's counts, from their days (a row each).
        *all_time_statements(flows_in("flow_id"), buckets=False),
        # All flows' changed hours.
        f"DELETE FROM {LEVELS} WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} "
        f"AND {level_in_day} AND {hours_in('start')}",
        f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {HOUR} AND flow_id = {ALL_FLOWS} "
        f"AND {level_in_day} AND {hours_in('start')}",
        f"INSERT INTO {LEVELS} {into} SELECT {HOUR}, {ALL_FLOWS}, hour, {sums} "
        f"FROM {ROLLUPS} WHERE {in_day} AND {hours_in('hour')} GROUP BY hour",
        f"INSERT INTO {LEVEL_BUCKETS} {buckets_into} "
        f"SELECT {HOUR}, {ALL_FLOWS}, hour, bucket, SUM(count) FROM {BUCKETS} "
        f"WHERE {in_day} AND {hours_in('hour')} GROUP BY hour, bucket "
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


def all_time_statements(flows: str, *, buckets: bool = True) -> list[str]:
    """Recompute the whole history of the flows the condition ``flows`` (on ``flow_id``)
    selects, from their days (and with ``buckets``, its histogram too). Named parameter
    ``epoch``: ``ALL_TIME_START``."""
    into = f"(span, flow_id, start, {', '.join(SUMMED)}, duration_min, duration_max)"
    statements = [
        f"DELETE FROM {LEVELS} WHERE span = {ALL_TIME} AND {flows}",
        f"INSERT INTO {LEVELS} {into} SELECT {ALL_TIME}, flow_id, %(epoch)s, {_sums()}, "
        f"MIN(duration_min), MAX(duration_max) FROM {LEVELS} "
        f"WHERE span = {DAY} AND {flows} GROUP BY flow_id",
    ]
    if buckets:
        statements += [
            f"DELETE FROM {LEVEL_BUCKETS} WHERE span = {ALL_TIME} AND {flows}",
            f"INSERT INTO {LEVEL_BUCKETS} (span, flow_id, start, bucket, count) "
            f"SELECT {ALL_TIME}, flow_id, %(epoch)s, bucket, SUM(count) FROM {LEVEL_BUCKETS} "
            f"WHERE span = {DAY} AND {flows} GROUP BY flow_id, bucket "
            "HAVING SUM(count) <> 0",
        ]
    return statements


def changed_rows_statement(vendor: str) -> str:
    """The (id, flow) of a day's changed hourly rows, locked on PostgreSQL until the fold
    ends."""
    lock = " FOR UPDATE" if vendor == "postgresql" else ""
    return (
        f"SELECT id, data_flow_id FROM {ROLLUPS} "
        f"WHERE changed AND hour >= %(start)s AND hour < %(end)s{lock}"
    )


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
