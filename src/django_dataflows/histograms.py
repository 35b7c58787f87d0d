"""Log-bucket duration histograms (the DDSketch idea), mergeable by adding counts.

A duration ``d`` of one millisecond or more falls in bucket ``ceil(log(d) / log(GAMMA))``,
which holds the values in ``(GAMMA ** (i - 1), GAMMA ** i]``; a zero duration has bucket
``ZERO_BUCKET``. Reading a bucket back as ``2 * GAMMA ** i / (GAMMA + 1)`` is within
``RELATIVE_ACCURACY`` of every value in it, so a percentile read from the histogram is
within 1 % of the exact one. Two histograms merge by adding the counts of equal buckets:
hours add up to a week, flows to a site, in SQL.

The bucket is computed by the database (the rollup triggers and the rebuild use the same
expression, :func:`bucket_sql`), so this module knows no model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

#: The bound on the relative error of a percentile read from a histogram.
RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
LOG_GAMMA = math.log(GAMMA)
#: The bucket of a zero duration (no positive whole number of milliseconds falls in it).
ZERO_BUCKET = -1


def bucket_sql(column: str) -> str:
    """The SQL expression of ``column``'s bucket; the same text on PostgreSQL and SQLite.

    ``LN`` and ``CEILING``: SQLite built without its math functions gets both from Django's
    connection, so writing a run through another SQLite client needs a build with them.
    """
    return (
        f"CASE WHEN {column} <= 0 THEN {ZERO_BUCKET} "
        f"ELSE CAST(CEILING(LN(CAST({column} AS DOUBLE PRECISION)) / {LOG_GAMMA!r}) AS INTEGER) END"
    )


def bucket_value(bucket: int) -> float:
    """The value a bucket stands for: within ``RELATIVE_ACCURACY`` of anything in it."""
    if bucket == ZERO_BUCKET:
        return 0.0
    return 2 * GAMMA**bucket / (GAMMA + 1)


def percentile_positions(count: int, fraction: float) -> tuple[int, int, float]:
    """Where ``percentile_cont`` reads in ``count`` sorted values: two ranks and a weight.

    The same float arithmetic as PostgreSQL's, so every path gives the same answer.
    """
    position = (count - 1) * fraction
    lower = math.floor(position)
    return lower, min(lower + 1, count - 1), position - lower


def interpolate(lower_value: float, upper_value: float, weight: float) -> float:
    return float(lower_value + (upper_value - lower_value) * weight)


def exact_percentile(ordered: Sequence[int], fraction: float) -> float:
    """``percentile_cont`` of sorted values."""
    lower, upper, weight = percentile_positions(len(ordered), fraction)
    return interpolate(ordered[lower], ordered[upper], weight)


def histogram_percentile(
    buckets: Iterable[tuple[int, int]],
    fraction: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """``percentile_cont`` estimated from ``(bucket, count)`` pairs, within 1 %.

    Each rank reads its bucket's value, kept inside the exact ``minimum`` and ``maximum``
    when they are known; ``None`` for an empty histogram.
    """
    ordered = sorted((bucket, count) for bucket, count in buckets if count > 0)
    return histogram_percentiles(ordered, (fraction,), minimum=minimum, maximum=maximum)[0]


def histogram_percentiles(
    ordered: Sequence[tuple[int, int]],
    fractions: Sequence[float],
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> list[float | None]:
    """:func:`histogram_percentile` of several fractions at once, from ``(bucket, count)``
    pairs already in bucket order (a bucket may repeat; counts of 0 or less are skipped):
    one pass over the histogram whatever the number of fractions."""
    total = sum(count for _bucket, count in ordered if count > 0)
    if not total:
        return [None] * len(fractions)
    positions = [percentile_positions(total, fraction) for fraction in fractions]
    ranks = sorted({rank for lower, upper, _weight in positions for rank in (lower, upper)})
    values: dict[int, float] = {}
    pending = iter(ranks)
    rank = next(pending)
    seen = 0
    for bucket, count in ordered:
        if count <= 0:
            continue
        seen += count
        while rank < seen:
            values[rank] = bucket_value(bucket)
            rank = next(pending, total)
        if rank >= total:
            break
    for rank in ranks:  # pragma: no cover - every rank < total lands in a bucket
        values.setdefault(rank, bucket_value(ordered[-1][0]))

    def clamped(value: float) -> float:
        if minimum is not None:
            value = max(value, float(minimum))
        if maximum is not None:
            value = min(value, float(maximum))
        return value

    return [
        interpolate(clamped(values[lower]), clamped(values[upper]), weight)
        for lower, upper, weight in positions
    ]
