"""The dependency graph of the flows, drawn on the server as SVG (no script, no CDN).

Flows are placed in columns by depth (a flow sits one column right of its deepest upstream
flow), edges are arrows from an upstream flow to its downstream flow, and each box links to
the flow's admin page and shows its last status.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from django_dataflows.models import DataFlow

BOX_WIDTH, BOX_HEIGHT = 180, 34
COLUMN_GAP, ROW_GAP, MARGIN = 70, 16, 10
#: Most flows drawn (a graph of more is no longer readable; the page says so).
MAX_FLOWS = 300


def flow_depths(flow_ids: list[int], edges: list[tuple[int, int]]) -> dict[int, int]:
    """Each flow's column: 0 without upstream flows, else one more than its deepest upstream.

    ``edges`` are (upstream, downstream) pairs. Flows on a cycle stored before cycles were
    refused are placed once and the walk stops, so this always ends.
    """
    upstreams: dict[int, list[int]] = {pk: [] for pk in flow_ids}
    for upstream, downstream in edges:
        upstreams.setdefault(downstream, []).append(upstream)
    depths: dict[int, int] = {}

    def depth(pk: int, seen: frozenset[int]) -> int:
        if pk in depths:
            return depths[pk]
        parents = [parent for parent in upstreams.get(pk, []) if parent not in seen]
        value = 1 + max((depth(parent, seen | {pk}) for parent in parents), default=-1)
        depths[pk] = value
        return value

    for pk in flow_ids:
        depth(pk, frozenset())
    return depths


def dependency_graph_svg(change_url: Callable[[int], str]) -> tuple[SafeString, int]:
    """The SVG of every flow that has upstream or downstream flows, and how many flows have
    none (listed apart, not drawn). ``change_url(pk)`` is a flow's admin page."""
    through = DataFlow.upstream_flows.through
    edges = [
        (upstream, downstream)
        for downstream, upstream in through.objects.values_list(
            "from_dataflow_id", "to_dataflow_id"
        )
    ]
    linked = {pk for edge in edges for pk in edge}
    flows = list(
        DataFlow.objects.filter(pk__in=linked)
        .order_by("name")
        .values_list("pk", "name", "last_run_status")[:MAX_FLOWS]
    )
    alone = DataFlow.objects.exclude(pk__in=linked).count()
    if not flows:
        return SafeString(""), alone
    depths = flow_depths([pk for pk, _name, _status in flows], edges)
    rows: dict[int, int] = {}
    position: dict[int, tuple[int, int]] = {}
    for pk, _name, _status in flows:
        column = depths[pk]
        row = rows.get(column, 0)
        rows[column] = row + 1
        x = MARGIN + column * (BOX_WIDTH + COLUMN_GAP)
        y = MARGIN + row * (BOX_HEIGHT + ROW_GAP)
        position[pk] = (x, y)
    width = MARGIN * 2 + (max(depths.values()) + 1) * (BOX_WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = MARGIN * 2 + max(rows.values()) * (BOX_HEIGHT + ROW_GAP) - ROW_GAP
    arrows = format_html_join(
        "",
        '<line class="dataflows-graph-edge" x1="{}" y1="{}" x2="{}" y2="{}" '
        'marker-end="url(#dataflows-arrow)"><title>{} → {}</title></line>',
        (
            (
                position[upstream][0] + BOX_WIDTH,
                position[upstream][1] + BOX_HEIGHT // 2,
                position[downstream][0] - 2,
                position[downstream][1] + BOX_HEIGHT // 2,
                names[upstream],
                names[downstream],
            )
            for names in [{pk: name for pk, name, _status in flows}]
            for upstream, downstream in edges
            if upstream in position and downstream in position
        ),
    )
    boxes = format_html_join(
        "",
        '<a href="{}" class="dataflows-graph-node" data-flow="{}">'
        '<rect x="{}" y="{}" width="{}" height="{}" rx="5" class="dataflows-graph-{}"/>'
        '<text x="{}" y="{}">{}</text><title>{} ({})</title></a>',
        (
            (
                change_url(pk),
                name,
                position[pk][0],
                position[pk][1],
                BOX_WIDTH,
                BOX_HEIGHT,
                status or "never",
                position[pk][0] + 10,
                position[pk][1] + BOX_HEIGHT // 2 + 5,
                name if len(name) <= 22 else name[:21] + "…",
                name,
                status or gettext("never ran"),
            )
            for pk, name, status in flows
        ),
    )
    svg = format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" class="dataflows-graph" role="img" '
        'width="{}" height="{}" viewBox="0 0 {} {}"><title>{}</title>'
        '<defs><marker id="dataflows-arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>{}{}</svg>',
        width,
        height,
        width,
        height,
        gettext("Flow dependencies: each arrow points from an upstream flow to the flow it starts"),
        arrows,
        boxes,
    )
    return svg, alone
