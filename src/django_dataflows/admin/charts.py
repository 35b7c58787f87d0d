"""Server-rendered SVG charts for the admin dashboard (no JavaScript, no CDN).

Each function returns markup that is safe to put in a template: every text it draws
comes through :func:`~django.utils.html.format_html` escaping.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from django_dataflows.models import RunStatus

#: Colours per status, readable on light and dark admin themes; the legend names them.
COLOURS = {
    RunStatus.SUCCESS: "#3c9a3c",
    RunStatus.FAILED: "#c0392b",
    RunStatus.TIMED_OUT: "#8e44ad",
    RunStatus.CANCELLED: "#d4a017",
    RunStatus.IN_PROGRESS: "#2e86c1",
    RunStatus.PENDING: "#85c1e9",
    RunStatus.PAUSED: "#7f8c8d",
}
WIDTH, HEIGHT, LEFT, BOTTOM = 720, 180, 40, 22


def _n(number: float) -> str:
    """A coordinate, formatted before ``format_html`` (which escapes its arguments)."""
    return f"{number:.1f}"


def _legend() -> SafeString:
    return format_html(
        '<ul class="dataflows-legend">{}</ul>',
        format_html_join(
            "",
            '<li><span class="dataflows-swatch" style="background:{}"></span>{}</li>',
            ((colour, RunStatus(status).label) for status, colour in COLOURS.items()),
        ),
    )


def hour_window(now: datetime, hours: int) -> tuple[datetime, datetime]:
    """The whole hours of a chart of the last ``hours`` hours: ``(start, end)``."""
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    return end - timedelta(hours=hours), end


def runs_per_hour(
    counts: dict[datetime, dict[str, int]], *, now: datetime, hours: int
) -> SafeString:
    """Stacked bars: how many runs were created in each of the last ``hours`` hours.

    ``counts`` are :meth:`~django_dataflows.models.DataFlowRunQuerySet.counts_per_hour`
    over these hours or more (from the hourly rollups and the few active runs, not from
    every run of the week); hours outside the chart are left out.
    """
    start, _end = hour_window(now, hours)
    buckets: dict[int, dict[str, int]] = defaultdict(dict)
    for hour, hour_counts in counts.items():
        index = int((hour - start) / timedelta(hours=1))
        if 0 <= index < hours:
            buckets[index].update(hour_counts)
    peak = max((sum(bucket.values()) for bucket in buckets.values()), default=0)
    scale = (HEIGHT - BOTTOM - 10) / max(peak, 1)
    bar = (WIDTH - LEFT) / hours
    parts = []
    for index in range(hours):
        y = float(HEIGHT - BOTTOM)
        for status, colour in COLOURS.items():
            count = buckets.get(index, {}).get(status, 0)
            if not count:
                continue
            height = count * scale
            y -= height
            label = f"{start + timedelta(hours=index):%a %H:00}: {count} {RunStatus(status).label}"
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
                    LEFT + index * bar,
                    y,
                    max(bar - 1, 0.5),
                    height,
                    colour,
                    label,
                )
            )
    step = 6 if hours <= 24 else 24
    for index in range(0, hours + 1, step):
        moment = start + timedelta(hours=index)
        parts.append(
            format_html(
                '<text x="{}" y="{}" class="dataflows-axis">{}</text>',
                _n(LEFT + index * bar),
                HEIGHT - 6,
                f"{moment:%H:%M}" if hours <= 24 else f"{moment:%a %d}",
            )
        )
    parts.append(format_html('<text x="0" y="14" class="dataflows-axis">{}</text>', peak))
    return _svg(parts, f"Runs per hour, last {hours} hours") + _legend()


def _svg(parts: list[SafeString], title: str, height: int = HEIGHT) -> SafeString:
    return format_html(
        '<svg class="dataflows-chart" role="img" viewBox="0 0 {} {}" width="100%" '
        'preserveAspectRatio="xMinYMin meet"><title>{}</title>{}</svg>',
        WIDTH,
        height,
        title,
        mark_safe("".join(parts)),  # noqa: S308 - parts are escaped
    )


def _horizontal(
    rows: list[tuple[str, list[tuple[float | None, str, str]]]], title: str, unit: str, top: float
) -> SafeString:
    """Horizontal bars, one group per flow: ``(name, [(value, colour, label), ...])``."""
    if not rows:
        return format_html('<p class="dataflows-quiet">{}</p>', "No finished runs yet.")
    label_width, row_height = 180, 14
    height = sum(row_height * len(values) + 8 for _name, values in rows) + 10
    scale = (WIDTH - label_width - 90) / max(top, 1)
    parts: list[SafeString] = []
    y = 4.0
    for name, values in rows:
        parts.append(
            format_html(
                '<text x="0" y="{}" class="dataflows-axis">{}</text>', _n(y + 11), name[:28]
            )
        )
        for value, colour, label in values:
            width = (value or 0) * scale
            text = "-" if value is None else f"{value:,.0f} {unit}"
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}">'
                    "<title>{}: {}</title></rect>"
                    '<text x="{}" y="{}" class="dataflows-axis">{} {}</text>',
                    label_width,
                    y,
                    width,
                    row_height - 2,
                    colour,
                    label,
                    text,
                    label_width + width + 4,
                    y + 10,
                    label,
                    text,
                )
            )
            y += row_height
        y += 8
    return _svg(parts, title, int(height))


#: A chart per flow draws this many flows at most: the slowest, or the least successful.
FLOWS_CHARTED = 30


def chosen(per_flow: dict[int, Any], key: str, *, highest: bool = False) -> list[int]:
    """The ``FLOWS_CHARTED`` flows with the highest (or lowest) ``key`` that have one."""
    ranked = sorted((stats[key], pk) for pk, stats in per_flow.items() if stats[key] is not None)
    if highest:
        ranked.reverse()
    return [pk for _value, pk in ranked[:FLOWS_CHARTED]]


def named(per_flow: dict[int, Any], names: dict[int, str], pks: list[int]) -> list[tuple[str, Any]]:
    """``(name, stats)`` of the flows ``pks``, in that order (a flow deleted meanwhile: its id)."""
    return [(names.get(pk, str(pk)), per_flow[pk]) for pk in pks if pk in per_flow]


def durations_per_flow(per_flow: list[tuple[str, Any]]) -> SafeString:
    """p50 and p95 run duration per flow (finished runs of the last 7 days)."""
    rows = [
        (
            name,
            [
                (stats["p50_duration_ms"], "#2e86c1", "p50"),
                (stats["p95_duration_ms"], "#1a5276", "p95"),
            ],
        )
        for name, stats in per_flow
        if stats["p95_duration_ms"] is not None
    ]
    top = max((value or 0 for _name, values in rows for value, _c, _l in values), default=0)
    return _horizontal(rows, "Slowest flows (ms), p50 and p95", "ms", top)


def success_rate_per_flow(per_flow: list[tuple[str, Any]]) -> SafeString:
    """Success rate per flow (percent of rated runs of the last 7 days)."""
    rows = [
        (name, [(stats["success_rate"], "#3c9a3c", "success")])
        for name, stats in per_flow
        if stats["success_rate"] is not None
    ]
    return _horizontal(rows, "Least successful flows (%)", "%", 100)


def overdue_flows(user: Any = None) -> list[Any] | None:
    """Overdue flows (those ``user`` sees, if given), or ``None`` where schedules cannot
    tell (no ``overdue()``)."""
    from django_dataflows.models import DataFlow

    overdue = getattr(DataFlow.objects, "overdue", None)
    if overdue is None:
        return None
    flows = overdue()
    if user is not None:
        flows = flows.visible_to(user)
    return list(flows.order_by("name")[:100])
