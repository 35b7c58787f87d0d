"""How the admin shows things: schedules, durations, relative times, badges, links."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.serializers.json import DjangoJSONEncoder
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext, ngettext

from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    RunStats,
    RunStatus,
)
from django_dataflows.schedules import describe_cron

#: The success-rate column counts the runs created in this window.
SUCCESS_RATE_WINDOW = timedelta(days=7)
#: Finished statuses that count for the success rate (a cancelled run is neither).
RATED_STATUSES = (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMED_OUT)
FAILURE_STATUSES = (RunStatus.FAILED, RunStatus.TIMED_OUT)
#: The heartbeat counts as stopped once it is older than this many of the shortest
#: enabled interval, and never sooner than HEARTBEAT_STALE_MINIMUM.
HEARTBEAT_STALE_INTERVALS = 3
HEARTBEAT_STALE_MINIMUM = timedelta(minutes=5)
#: The health box counts failures in this window.
FAILURE_WINDOW = timedelta(hours=24)
RECENT_RUNS_SHOWN = 10
UPCOMING_RUNS_SHOWN = 5
BACKTRACE_PERMISSION = "dataflows.view_dataflowrun"


# -- presentation helpers ---------------------------------------------------------------

_INTERVAL_UNITS: tuple[tuple[int, Callable[[int], str]], ...] = (
    (86400, lambda n: ngettext("%(n)d day", "%(n)d days", n) % {"n": n}),
    (3600, lambda n: ngettext("%(n)d hour", "%(n)d hours", n) % {"n": n}),
    (60, lambda n: ngettext("%(n)d minute", "%(n)d minutes", n) % {"n": n}),
    (1, lambda n: ngettext("%(n)d second", "%(n)d seconds", n) % {"n": n}),
)


def describe_interval(seconds: int) -> str:
    """``300`` → ``"every 5 minutes"``; ``3600`` → ``"every hour"``."""
    single = {
        86400: gettext("every day"),
        3600: gettext("every hour"),
        60: gettext("every minute"),
        1: gettext("every second"),
    }
    if seconds in single:
        return single[seconds]
    parts = []
    remainder = seconds
    for size, name in _INTERVAL_UNITS:
        count, remainder = divmod(remainder, size)
        if count:
            parts.append(name(count))
    return gettext("every %(interval)s") % {"interval": " ".join(parts)}


def describe_schedule(data_flow: DataFlow) -> str:
    """The flow's schedule in words, an invalid one shown as such (never an exception)."""
    if data_flow.cron:
        error = data_flow.schedule_error
        if error:
            return format_html(
                '<span class="dataflows-badge dataflows-badge--failed" title="{}">{}</span> '
                "<code>{}</code>",
                error,
                gettext("invalid schedule"),
                data_flow.cron,
            )
        return describe_cron(data_flow.cron, data_flow.timezone)
    if data_flow.run_interval is None:
        return gettext("no schedule")
    return describe_interval(data_flow.run_interval)


def flow_links(flows: Any) -> str:
    """Links to the admin pages of ``flows``, separated by commas."""
    return format_html_join(
        ", ",
        '<a href="{}">{}</a>',
        ((reverse("admin:dataflows_dataflow_change", args=[flow.pk]), flow.name) for flow in flows),
    )


def upstream_run_links(run: DataFlowRun) -> str:
    """``after A #12, B #14``: the upstream runs whose success started ``run``."""
    links = format_html_join(
        ", ",
        '<a href="{}">{} #{}</a>',
        (
            (
                reverse("admin:dataflows_dataflowrun_change", args=[upstream.pk]),
                upstream.data_flow.name,
                upstream.pk,
            )
            for upstream in run.upstream_runs.all()
        ),
    )
    return format_html("{} {}", gettext("after"), links) if links else ""


def format_duration(duration: timedelta | None) -> str:
    """A run's duration for people: ``850 ms``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if duration is None:
        return ""
    seconds = duration.total_seconds()
    if seconds < 1:
        return gettext("%(ms)d ms") % {"ms": round(seconds * 1000)}
    if seconds < 60:
        return gettext("%(s).1f s") % {"s": seconds}
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return gettext("%(min)d min %(s)d s") % {"min": minutes, "s": secs}
    hours, minutes = divmod(minutes, 60)
    return gettext("%(h)d h %(min)d min") % {"h": hours, "min": minutes}


def format_milliseconds(milliseconds: float | None) -> str:
    """A duration in ms from the statistics, as ``format_duration`` shows run durations."""
    if milliseconds is None:
        return "-"
    return format_duration(timedelta(milliseconds=milliseconds))


def flow_stats(data_flow: DataFlow) -> RunStats | None:
    """The statistics the flow changelist attached to ``data_flow`` (7 days), if any."""
    stats: RunStats | None = getattr(data_flow, "dataflows_stats", None)
    return stats


def relative_time(moment: datetime, now: datetime | None = None) -> SafeString:
    """``<time>`` saying "3 minutes ago" or "in 5 minutes", with the exact time as title."""
    now = now or timezone.now()
    if abs(moment - now) < timedelta(minutes=1):
        text = gettext("just now") if moment <= now else gettext("in under a minute")
    elif moment <= now:
        text = gettext("%(delta)s ago") % {"delta": timesince(moment, now, depth=1)}
    else:
        text = gettext("in %(delta)s") % {"delta": timeuntil(moment, now, depth=1)}
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        moment.isoformat(),
        date_format(timezone.localtime(moment), "DATETIME_FORMAT"),
        text,
    )


def status_badge(status: str) -> SafeString:
    """A coloured badge; its text names the status, so it needs no colour to be read."""
    if not status:
        return format_html(
            '<span class="dataflows-badge dataflows-badge--none">{}</span>', gettext("never run")
        )
    label = RunStatus(status).label if status in RunStatus.values else status
    return format_html('<span class="dataflows-badge dataflows-badge--{}">{}</span>', status, label)


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)


def _admin_url(
    name: str, *args: Any, site: admin.AdminSite, query: dict[str, str] | None = None
) -> str:
    url = reverse(f"admin:dataflows_{name}", args=args, current_app=site.name)
    return f"{url}?{urlencode(query)}" if query else url
