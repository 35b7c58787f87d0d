"""Statistics of runs: counts, success rate, durations and percentiles, from runs or rollups."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from itertools import groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any, TypedDict

from django.db import connections, models
from django.db.models.expressions import Col
from django.db.models.lookups import Lookup

import django_dataflows.histograms as histograms
import django_dataflows.rollup_levels as rollup_levels
import django_dataflows.rollup_sql as rollup_sql

from .choices import ACTIVE_STATUSES, RATED_STATUSES, RunStatus
from .rollups import RunRollup

if TYPE_CHECKING:
    from .runs import DataFlowRunQuerySet


class RunStats(TypedDict):
    """What :meth:`DataFlowRunQuerySet.stats` returns."""

    total: int
    pending: int
    in_progress: int
    paused: int
    success: int
    failed: int
    cancelled: int
    timed_out: int
    success_rate: float | None
    avg_duration_ms: float | None
    min_duration_ms: int | None
    max_duration_ms: int | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    avg_cpu_time_ms: float | None
    avg_db_queries: float | None


#: The percentiles stats() reports, by key.
PERCENTILES = {"p50_duration_ms": 0.5, "p95_duration_ms": 0.95}


def _percentile_positions(count: int, fraction: float) -> tuple[int, int, float]:
    """Where ``percentile_cont`` reads in ``count`` sorted values: two ranks and a weight.

    The same float arithmetic as PostgreSQL's, so both databases give the same answer.
    """
    position = (count - 1) * fraction
    lower = math.floor(position)
    return lower, min(lower + 1, count - 1), position - lower


def _interpolate(lower_value: float, upper_value: float, weight: float) -> float:
    return float(lower_value + (upper_value - lower_value) * weight)


#: What one statistics row holds, in order, after the flow id of a per-flow row.
_STATS_COLUMNS = (
    "total",
    *RunStatus.values,
    "timed_count",
    "avg_duration_ms",
    "min_duration_ms",
    "max_duration_ms",
    "avg_cpu_time_ms",
    "avg_db_queries",
)


#: Up to this many rated runs, PostgreSQL sorts them for ``percentile_cont`` in memory;
#: beyond, reading two offsets of the rated-duration index is faster (``bench/stats.py``).
SORTED_PERCENTILES_LIMIT = 100_000


def _sorted_percentiles(rated: models.QuerySet[Any]) -> dict[str, float | None]:
    """PostgreSQL's ``percentile_cont`` over the durations of ``rated`` runs (one query)."""
    inner_sql, params = rated.values("duration_ms").query.sql_with_params()
    fractions = ", ".join(repr(fraction) for fraction in PERCENTILES.values())
    sql = (
        f"SELECT PERCENTILE_CONT(ARRAY[{fractions}]) "  # noqa: S608 - no user input
        f"WITHIN GROUP (ORDER BY runs.duration_ms) FROM ({inner_sql}) runs"
    )
    with connections[rated.db].cursor() as cursor:
        cursor.execute(sql, params)
        (values,) = cursor.fetchone() or (None,)
    return _postgres_percentiles({"percentiles": values})


#: The statistics row of no runs at all.
_NO_RUNS: dict[str, Any] = {
    **dict.fromkeys(_STATS_COLUMNS, 0),
    **dict.fromkeys(
        (
            "avg_duration_ms",
            "min_duration_ms",
            "max_duration_ms",
            "avg_cpu_time_ms",
            "avg_db_queries",
        )
    ),
}


def _stats_sql(inner_sql: str, *, percentiles: bool, per_flow: bool) -> tuple[str, list[Any]]:
    """One aggregate statement over the rows ``inner_sql`` selects (flow, status, duration).

    Written out rather than built from ORM aggregates: Django takes longer to resolve
    fourteen filtered aggregates than PostgreSQL takes to compute them over a flow's runs
    (``bench/stats.py``). Plain ``CASE`` expressions run on every database; the ordered-set
    aggregate ignores the NULLs they give for runs that are not rated.
    """
    rated = "runs.status IN (%s, %s, %s) AND runs.duration_ms IS NOT NULL"
    rated_duration = f"CASE WHEN {rated} THEN runs.duration_ms END"
    columns = ["runs.data_flow_id"] if per_flow else []
    columns.append("COUNT(*)")
    params: list[Any] = []
    for status in RunStatus.values:
        columns.append("COUNT(CASE WHEN runs.status = %s THEN 1 END)")
        params.append(status)
    for function in ("COUNT", "AVG", "MIN", "MAX"):
        columns.append(f"{function}({rated_duration})")
        params += RATED_STATUSES
    for cost in ("cpu_time_ms", "db_queries"):
        columns.append(f"AVG(CASE WHEN {rated} THEN runs.{cost} END)")
        params += RATED_STATUSES
    if percentiles:
        fractions = ", ".join(repr(fraction) for fraction in PERCENTILES.values())
        columns.append(
            f"PERCENTILE_CONT(ARRAY[{fractions}]) WITHIN GROUP (ORDER BY {rated_duration})"
        )
        params += RATED_STATUSES
    sql = f"SELECT {', '.join(columns)} FROM ({inner_sql}) runs"  # noqa: S608 - no user input
    return (sql + " GROUP BY runs.data_flow_id" if per_flow else sql), params


def _postgres_percentiles(row: dict[str, Any]) -> dict[str, float | None]:
    values = row.get("percentiles") or [None] * len(PERCENTILES)
    return dict(zip(PERCENTILES, values, strict=True))


def _rounded(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _run_stats(row: dict[str, Any], percentiles: dict[str, float | None]) -> RunStats:
    rated = sum(row[status] for status in RATED_STATUSES)
    return RunStats(
        total=row["total"],
        pending=row[RunStatus.PENDING],
        in_progress=row[RunStatus.IN_PROGRESS],
        paused=row[RunStatus.PAUSED],
        success=row[RunStatus.SUCCESS],
        failed=row[RunStatus.FAILED],
        cancelled=row[RunStatus.CANCELLED],
        timed_out=row[RunStatus.TIMED_OUT],
        success_rate=round(100 * row[RunStatus.SUCCESS] / rated, 2) if rated else None,
        avg_duration_ms=_rounded(row["avg_duration_ms"]),
        min_duration_ms=row["min_duration_ms"],
        max_duration_ms=row["max_duration_ms"],
        p50_duration_ms=percentiles["p50_duration_ms"],
        p95_duration_ms=percentiles["p95_duration_ms"],
        avg_cpu_time_ms=_rounded(row.get("avg_cpu_time_ms")),
        avg_db_queries=_rounded(row.get("avg_db_queries")),
    )


#: Below this many rated runs, percentiles are exact: their durations are read from the runs
#: (through the flow's index); from this many on they come from the rollups' histograms.
EXACT_PERCENTILES_BELOW = 1000
#: At most this many durations are read for exact percentiles in one call: statistics of
#: many flows at once (a page of the admin's flow list, the dashboard) take the flows with
#: the fewest runs exactly and the others from the histograms, within 1 %.
EXACT_DURATIONS_READ = 20_000


def _rollup_scope(runs: DataFlowRunQuerySet) -> tuple[bool, frozenset[int] | None]:
    """Can rollups answer :meth:`~DataFlowRunQuerySet.stats` for ``runs``, and for which flows?

    They can for all runs and for the runs of some flows (``None`` means every flow), with
    or without ``not_deleted()``; any other filter needs the runs themselves.
    """
    query = runs.query
    if (
        connections[runs.db].vendor not in ROLLUP_VENDORS
        or query.is_sliced
        or query.distinct
        or query.extra
        or query.combinator
        # A filter on the flow's own columns joins the flow table (a trimmed join has no
        # references left).
        or sum(1 for count in query.alias_refcount.values() if count) > 1
    ):
        return False, None
    where = query.where
    if where.negated or where.connector != "AND":
        return False, None
    flows: frozenset[int] | None = None
    for child in where.children:
        if not isinstance(child, Lookup) or not isinstance(child.lhs, Col):
            return False, None
        name = child.lhs.target.name
        if name == "deleted_at" and child.lookup_name == "isnull" and child.rhs is True:
            continue  # statistics leave soft-deleted runs out anyway
        if name != "data_flow" or child.lookup_name not in ("exact", "in"):
            return False, None
        values = child.rhs if child.lookup_name == "in" else [child.rhs]
        if not isinstance(values, list | tuple | set | frozenset):
            return False, None  # a subquery
        ids = set()
        for value in values:
            key = getattr(value, "pk", value)
            if not isinstance(key, int):
                return False, None
            ids.add(key)
        flows = frozenset(ids) if flows is None else flows & ids
    return True, flows


#: Databases whose run table carries the rollup triggers (migration 0008).
ROLLUP_VENDORS = ("postgresql", "sqlite")
#: Every status, computed once (``RunStatus.values`` builds a new list each time).
_STATUSES = tuple(RunStatus.values)
#: The statuses a rollup counts, in the order of its count columns.
_ROLLED_UP = tuple(RunStatus(status) for status in rollup_sql.COUNT_COLUMNS)


def _first_whole_hour(since: datetime | None) -> datetime | None:
    """The first hour starting at or after ``since``: rollups answer from there on."""
    if since is None:
        return None
    hour = since.replace(minute=0, second=0, microsecond=0)
    return hour if hour == since else hour + timedelta(hours=1)


def _rollup_stats(
    using: str,
    flows: frozenset[int] | None,
    since: datetime | None,
    *,
    per_flow: bool,
    percentiles: bool = True,
    durations_read: int | None = None,
) -> dict[int, RunStats]:
    """Statistics from the rollups, keyed by flow id (or by 0 for all of them together)."""
    if flows is not None and not flows:
        return {}
    connection_ = connections[using]
    whole_from = _first_whole_hour(since)

    def adapt(value: datetime) -> Any:
        return connection_.ops.adapt_datetimefield_value(value)

    group = "data_flow_id" if per_flow else "0"
    flow_filter = ""
    flow_params: list[Any] = []
    if flows is not None:
        flow_filter = f" AND data_flow_id IN ({', '.join(['%s'] * len(flows))})"
        flow_params = sorted(flows)
    group_by = " GROUP BY data_flow_id" if per_flow else ""
    edge_filter = " AND created_at >= %s AND created_at < %s"
    edge = since is not None and whole_from is not None and since < whole_from
    edge_params = [adapt(since), adapt(whole_from)] if since and whole_from and edge else []
    since_filter, since_params = (
        ("", []) if since is None else (" AND created_at >= %s", [adapt(since)])
    )
    finished = rollup_sql.finished_sql("r")
    timed = rollup_sql.timed_sql("r")
    timed_duration = f"CASE WHEN {timed} THEN r.duration_ms END"
    changed = _changed_rollups(using)
    parts = [
        *rollup_levels.window_parts(
            buckets=False,
            per_flow=per_flow,
            flows=flows,
            whole_from=whole_from,
            changed=changed,
            adapt=adapt,
        ),
        (
            f"SELECT {group}, "
            + ", ".join("COUNT(CASE WHEN r.status = %s THEN 1 END)" for _ in ACTIVE_STATUSES)
            + ", 0, 0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0 "
            f"FROM {rollup_sql.RUNS} r WHERE r.status IN (%s, %s, %s) "
            f"AND r.deleted_at IS NULL{flow_filter}{since_filter}{group_by}",
            [*ACTIVE_STATUSES, *ACTIVE_STATUSES, *flow_params, *since_params],
        ),
    ]
    if edge:
        parts.append(
            (
                f"SELECT {group}, 0, 0, 0, "  # noqa: S608 - constants only
                + ", ".join(
                    f"COUNT(CASE WHEN r.status = '{status}' THEN 1 END)"
                    for status in rollup_sql.COUNT_COLUMNS
                )
                + f", COUNT({timed_duration}), SUM({timed_duration}), MIN({timed_duration}), "
                f"MAX({timed_duration})"
                + "".join(
                    f", COUNT(CASE WHEN {timed} THEN r.{column} END)"
                    f", SUM(CASE WHEN {timed} THEN r.{column} END)"
                    for column in rollup_sql.COSTS.values()
                )
                + f" FROM {rollup_sql.RUNS} r WHERE r.deleted_at IS NULL "
                f"AND {finished}{flow_filter}{edge_filter}{group_by}",
                [*flow_params, *edge_params],
            )
        )
    rows: dict[int, dict[str, Any]] = {}
    names = (
        *("pending", "in_progress", "paused", *_ROLLED_UP, "timed_count", "sum", "min", "max"),
        *rollup_sql.cost_columns(),
    )
    # The database adds the parts up: a row per flow (one for all flows), however many
    # days, hours and runs the parts read.
    columns = [f"c{index}" for index in range(len(names))]
    totals = ", ".join(
        f"{'MIN' if name == 'min' else 'MAX' if name == 'max' else 'SUM'}({column})"
        for name, column in zip(names, columns, strict=True)
    )
    union = " UNION ALL ".join(sql for sql, _params in parts)
    with connection_.cursor() as cursor:
        cursor.execute(
            f"WITH parts(k, {', '.join(columns)}) AS ({union}) "  # noqa: S608 - constants
            f"SELECT k, {totals} FROM parts GROUP BY k",
            [p for _sql, params in parts for p in params],
        )
        for flow_id, *values in cursor.fetchall():
            rows[int(flow_id)] = {
                name: value if name in ("min", "max") else int(value or 0)
                for name, value in zip(names, values, strict=True)
            }
    rows = {
        flow_id: row
        for flow_id, row in rows.items()
        if sum(row[status] for status in _STATUSES) or not per_flow
    }
    found = (
        _rollup_percentiles(
            using,
            rows,
            flows,
            since,
            whole_from,
            changed,
            per_flow=per_flow,
            durations_read=durations_read,
        )
        if percentiles
        else {}
    )
    stats = {}
    for flow_id, row in rows.items():
        count = row["timed_count"]
        row.update(
            total=sum(row[status] for status in _STATUSES),
            timed_count=count,
            avg_duration_ms=row["sum"] / count if count else None,
            min_duration_ms=row["min"] if count else None,
            max_duration_ms=row["max"] if count else None,
            avg_cpu_time_ms=_average(row["cpu_time_sum"], row["cpu_time_count"]),
            avg_db_queries=_average(row["db_queries_sum"], row["db_queries_count"]),
        )
        stats[flow_id] = _run_stats(row, found.get(flow_id, dict.fromkeys(PERCENTILES)))
    return stats


def _changed_rollups(using: str) -> list[tuple[int, datetime]] | None:
    """The (flow, hour) of the hourly rollups not folded since they changed (one indexed
    query); ``None`` past ``MAX_CHANGED_ROWS``: then statistics read the hourly rows."""
    rows = list(
        RunRollup.objects.using(using)
        .filter(changed=True)
        .order_by("hour")
        .values_list("data_flow_id", "hour")[: rollup_levels.MAX_CHANGED_ROWS + 1]
    )
    return None if len(rows) > rollup_levels.MAX_CHANGED_ROWS else rows


def _average(total: int, count: int) -> float | None:
    return total / count if count else None


def _rollup_percentiles(
    using: str,
    rows: dict[int, dict[str, Any]],
    flows: frozenset[int] | None,
    since: datetime | None,
    whole_from: datetime | None,
    changed: list[tuple[int, datetime]] | None,
    *,
    per_flow: bool,
    durations_read: int | None,
) -> dict[int, dict[str, float | None]]:
    """The percentiles of each row: exact from the durations of few runs, else histograms.

    At most one query for the exact ones and one for the histograms.
    """
    connection_ = connections[using]

    def adapt(value: datetime) -> Any:
        return connection_.ops.adapt_datetimefield_value(value)

    def flow_filter(keys: list[int]) -> tuple[str, list[Any]]:
        if per_flow:
            return f" AND data_flow_id IN ({', '.join(['%s'] * len(keys))})", keys
        if flows is None:
            return "", []
        return f" AND data_flow_id IN ({', '.join(['%s'] * len(flows))})", sorted(flows)

    group = "data_flow_id" if per_flow else "0"
    group_by = "data_flow_id, " if per_flow else ""
    timed = rollup_sql.timed_sql("r")
    result: dict[int, dict[str, float | None]] = {}
    many = {key for key, row in rows.items() if row["timed_count"] >= EXACT_PERCENTILES_BELOW}
    # Exact for the smallest first, while the durations to read stay within the budget:
    # a page of many flows reads a bounded number of runs, the rest come from histograms.
    few: list[int] = []
    budget = EXACT_DURATIONS_READ if durations_read is None else durations_read
    for key in sorted(
        (key for key, row in rows.items() if 0 < row["timed_count"] < EXACT_PERCENTILES_BELOW),
        key=lambda key: (rows[key]["timed_count"], key),
    ):
        if rows[key]["timed_count"] <= budget:
            few.append(key)
            budget -= rows[key]["timed_count"]
        else:
            many.add(key)
    few.sort()
    if few:
        where, params = flow_filter(few)
        since_sql, since_params = (
            ("", []) if since is None else (" AND created_at >= %s", [adapt(since)])
        )
        durations: dict[int, list[int]] = defaultdict(list)
        with connection_.cursor() as cursor:
            cursor.execute(
                f"SELECT {group}, r.duration_ms FROM {rollup_sql.RUNS} r "  # noqa: S608
                f"WHERE r.deleted_at IS NULL AND {timed}{where}{since_sql} "
                "ORDER BY r.duration_ms",
                [*params, *since_params],
            )
            for key, duration in cursor.fetchall():
                durations[int(key)].append(duration)
        for key in few:
            values = durations.get(key, [])
            if len(values) == rows[key]["timed_count"]:
                result[key] = {
                    name: histograms.exact_percentile(values, fraction)
                    for name, fraction in PERCENTILES.items()
                }
            else:  # some were pruned: the histogram still has them
                many.add(key)
    if many:
        keys = sorted(many)
        where, params = flow_filter(keys)
        levels = rollup_levels.window_parts(
            buckets=True,
            per_flow=per_flow,
            # Every flow's rows rather than a list of nearly all of them: the few others
            # are skipped below.
            flows=keys if per_flow and flows is not None else flows,
            whole_from=whole_from,
            changed=changed,
            adapt=adapt,
        )
        sql = " UNION ALL ".join(part for part, _params in levels)
        all_params = [param for _part, part_params in levels for param in part_params]
        if since is not None and whole_from is not None and since < whole_from:
            bucket = histograms.bucket_sql("r.duration_ms")
            sql += (
                f" UNION ALL SELECT {group}, {bucket}, COUNT(*) FROM {rollup_sql.RUNS} r "  # noqa: S608
                f"WHERE r.deleted_at IS NULL AND {timed}{where} "
                f"AND created_at >= %s AND created_at < %s GROUP BY {group_by}{bucket}"
            )
            all_params += [*params, adapt(since), adapt(whole_from)]
        # The database sorts the parts: each flow's histogram arrives in bucket order (a
        # bucket once per part), read in one pass.
        sql += " ORDER BY 1, 2"
        with connection_.cursor() as cursor:
            cursor.execute(sql, all_params)
            merged = cursor.fetchall()
        wanted = set(keys)
        fractions = tuple(PERCENTILES.values())
        for key, pairs in groupby(merged, key=itemgetter(0)):
            key = int(key)
            if key not in wanted:
                continue
            row = rows[key]
            found = histograms.histogram_percentiles(
                [(bucket_index, int(count)) for _key, bucket_index, count in pairs],
                fractions,
                minimum=row["min"],
                maximum=row["max"],
            )
            result[key] = dict(zip(PERCENTILES, found, strict=True))
        for key in keys:
            result.setdefault(key, dict.fromkeys(PERCENTILES))
    return result
