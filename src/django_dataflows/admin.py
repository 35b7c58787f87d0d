"""The Django admin for data flows and their runs.

Thin on purpose: the actions call :meth:`DataFlow.trigger_run` and :meth:`DataFlow.save`,
and everything else is presentation. The changelists annotate what they show, so they
make the same number of queries for five flows as for five thousand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC as datetime_utc
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.exceptions import NotRegistered
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import (
    Count,
    F,
    FloatField,
    IntegerField,
    Min,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Cast, Coalesce, NullIf
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, reverse
from django.urls import path as url_path
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_dataflows.admin_control import (
    DataFlowRunStepInline,
    RunControlAdminMixin,
    RunWithInputAdminMixin,
    progress_html,
)
from django_dataflows.admin_graph import dependency_graph_svg
from django_dataflows.admin_lists import (
    EXACT_COUNT_LIMIT,
    BoundedCountPaginator,
    CreatedWithinFilter,
    FlowFilter,
    sorts_by,
)
from django_dataflows.admin_logs import RunLogAdminMixin
from django_dataflows.admin_owners import OwnedFlowsAdminMixin, OwnedRunsAdminMixin, record
from django_dataflows.backends.sync import run_after_response
from django_dataflows.conf import app_settings
from django_dataflows.exceptions import EnqueueFailed, RunAlreadyActive
from django_dataflows.flows import is_registered, registered_flows
from django_dataflows.live.admin_views import LiveRunAdminMixin
from django_dataflows.models import (
    ACTIVE_STATUSES,
    AuditAction,
    Backfill,
    DataFlow,
    DataFlowQuerySet,
    DataFlowRun,
    Heartbeat,
    RunStats,
    RunStatus,
    RunTrigger,
    cycle_error,
    dependency_cycle,
    may_see_every_flow,
)
from django_dataflows.permissions import (
    RUN_PERMISSION,
    WHAT_RUNS_FIELDS,
    fields_that_make_due,
    run_permission_message,
)
from django_dataflows.runs.starting import trigger_run
from django_dataflows.schedules import describe_cron, get_zone, zone_name

if TYPE_CHECKING:
    from django.forms.widgets import _OptAttrs
    from django.http import HttpRequest, HttpResponse

    # Generic in django-stubs only; Django's classes are not subscriptable at run time.
    _DataFlowModelForm = forms.ModelForm[DataFlow]
    _DataFlowModelAdmin = admin.ModelAdmin[DataFlow]
    _DataFlowRunModelAdmin = admin.ModelAdmin[DataFlowRun]
    _BackfillModelAdmin = admin.ModelAdmin[Backfill]
else:
    _DataFlowModelForm = forms.ModelForm
    _DataFlowModelAdmin = _DataFlowRunModelAdmin = _BackfillModelAdmin = admin.ModelAdmin

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


# -- health at a glance --------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """What the flow changelist says about the scheduler as a whole."""

    last_heartbeat: Heartbeat | None
    #: A heartbeat older than this means cron has stopped calling it.
    stale_after: timedelta
    has_enabled_flows: bool
    stuck_runs: int
    recent_failures: int
    now: datetime

    @property
    def heartbeat_is_stale(self) -> bool:
        if self.last_heartbeat is None:
            return self.has_enabled_flows
        return self.now - self.last_heartbeat.received_at > self.stale_after

    @property
    def stale_after_text(self) -> str:
        return timesince(self.now - self.stale_after, self.now)

    @property
    def last_heartbeat_text(self) -> SafeString | None:
        if self.last_heartbeat is None:
            return None
        return relative_time(self.last_heartbeat.received_at, self.now)


def collect_health(now: datetime | None = None) -> Health:
    """The health box's figures, in four queries whatever the number of flows and runs."""
    now = now or timezone.now()
    enabled = DataFlow.objects.enabled().aggregate(shortest=Min("run_interval"), count=Count("pk"))
    shortest = enabled["shortest"]  # None when every enabled flow is on a cron schedule
    stale_after = HEARTBEAT_STALE_MINIMUM
    if shortest is not None:
        stale_after = max(stale_after, timedelta(seconds=HEARTBEAT_STALE_INTERVALS * shortest))
    return Health(
        last_heartbeat=Heartbeat.last(),
        stale_after=stale_after,
        has_enabled_flows=bool(enabled["count"]),
        # In progress past their timeout, or pending past PICKUP_TIMEOUT (not yet retaken).
        stuck_runs=DataFlowRun.objects.stuck(now).count()
        + DataFlowRun.objects.unclaimed(now).count(),
        recent_failures=DataFlowRun.objects.filter(
            status__in=FAILURE_STATUSES, ended_at__gte=now - FAILURE_WINDOW
        ).count(),
        now=now,
    )


# -- the data flow form -------------------------------------------------------------------


class FlowSelect(forms.Select):
    """A select of flow paths whose options carry each flow's description as a tooltip."""

    descriptions: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.descriptions = {}

    def create_option(
        self,
        name: str,
        value: Any,
        label: int | str,
        selected: bool,
        index: int,
        subindex: int | None = None,
        attrs: _OptAttrs | None = None,
    ) -> dict[str, Any]:
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        description = self.descriptions.get(str(value))
        if description:
            option["attrs"]["title"] = description
        return option


class ConfigurationField(forms.JSONField):
    """Edit JSON indented, and say where malformed JSON went wrong."""

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not self.disabled:
            try:
                json.loads(value, cls=self.decoder)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    _("Enter valid JSON: %(error)s (line %(line)d, column %(column)d)."),
                    code="invalid",
                    params={"error": exc.msg, "line": exc.lineno, "column": exc.colno},
                ) from None
            except RecursionError:
                raise ValidationError(
                    _("Enter JSON nested at most %(depth)d levels deep."),
                    code="invalid",
                    params={"depth": app_settings.MAX_JSON_DEPTH},
                ) from None
        return super().to_python(value)

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value  # show what was typed, mistakes included
        text = json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate, refused anyway: show it escaped
            text = json.dumps(value, indent=2, cls=self.encoder)
        return text


class DataFlowForm(_DataFlowModelForm):
    """The data flow form: ``flow`` chosen from the registered flows, JSON configuration.

    The model's own validation (``full_clean``) still runs, so the registered-flow, queue
    and JSON-object rules are enforced here exactly as everywhere else.
    """

    #: Whether the user may run the flow; without it, the form refuses making it due.
    may_run = True
    #: The flows offered as upstream flows (the admin gives those the user sees).
    upstream_choices: QuerySet[DataFlow] | None = None

    flow = forms.ChoiceField(label=_("Flow"), widget=FlowSelect)
    schedule_kind = forms.ChoiceField(
        label=_("Schedule kind"),
        choices=(
            ("interval", _("Every N seconds")),
            ("cron", _("Cron expression")),
            ("none", _("No schedule: after its upstream flows, or when started")),
        ),
        widget=forms.RadioSelect(attrs={"class": "dataflows-schedule-kind"}),
        required=False,
        help_text=_("The other kind's field is ignored (and cleared) when you save."),
    )

    class Meta:
        model = DataFlow
        fields = (
            "name",
            "description",
            "flow",
            "enabled",
            "run_interval",
            "cron",
            "timezone",
            "alert_after",
            "alert_emails",
            "disable_after_failures",
            "max_duration",
            "configuration",
            "queue",
            "max_retries",
            "timeout",
            "catchup",
            "upstream_flows",
            "wait_for",
        )
        field_classes = {"configuration": ConfigurationField}
        widgets = {
            "configuration": forms.Textarea(
                attrs={"rows": 10, "cols": 80, "class": "vLargeTextField dataflows-json"}
            ),
            "alert_emails": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "flow" in self.fields:
            self._offer_registered_flows()
        upstream = self.fields.get("upstream_flows")
        if self.upstream_choices is not None and isinstance(
            upstream, forms.ModelMultipleChoiceField
        ):
            upstream.queryset = self.upstream_choices
        if "schedule_kind" in self.fields:
            self.fields["schedule_kind"].initial = (
                "cron"
                if self.instance.cron
                else "none"
                if self.instance.pk and self.instance.run_interval is None
                else "interval"
            )
        for name in ("wait_for", "catchup"):
            if name in self.fields:
                # A form posted without them (a script) keeps the stored or default value.
                self.fields[name].required = False
        if "upstream_flows" in self.fields:
            field = self.fields["upstream_flows"]
            assert isinstance(field, forms.ModelMultipleChoiceField)
            # Among the flows the user sees (the admin says which), never the flow itself.
            choices = (
                DataFlow.objects.all() if self.upstream_choices is None else self.upstream_choices
            )
            if self.instance.pk:
                choices = choices.exclude(pk=self.instance.pk)
            field.queryset = choices

    def clean(self) -> dict[str, Any]:
        """Apply the schedule-kind switch: the other kind's field is emptied.

        Without the switch in the data (a script posting the form), both fields are kept
        and the model's rule (exactly one of the two) decides.
        """
        cleaned = super().clean() or {}
        self._check_run_permission(cleaned)
        kind = cleaned.get("schedule_kind")
        dropped = {"cron": ["run_interval"], "interval": ["cron"], "none": ["cron", "run_interval"]}
        for name in dropped.get(kind or "", []):
            if name in self.fields:
                cleaned[name] = None if name == "run_interval" else ""
                self.errors.pop(name, None)  # a mistake in a field that is switched off
        for name in ("wait_for", "catchup"):
            if name in self.fields and not cleaned.get(name):
                cleaned[name] = getattr(self.instance, name)
        upstreams = cleaned.get("upstream_flows")
        if upstreams is not None and self.instance.pk is not None:
            cycle = dependency_cycle(self.instance, upstreams)
            if cycle:
                self.add_error("upstream_flows", cycle_error(cycle))
        return cleaned

    def _check_run_permission(self, cleaned: dict[str, Any]) -> None:
        if self.may_run:
            return
        changes = {
            name: cleaned[name] for name in ("enabled", *WHAT_RUNS_FIELDS) if name in cleaned
        }
        before = self.instance if self.instance.pk else None
        for name in fields_that_make_due(before, changes):
            self.add_error(name, run_permission_message([name]))

    def _offer_registered_flows(self) -> None:
        field = self.fields["flow"]
        assert isinstance(field, forms.ChoiceField)
        flows = registered_flows()
        choices: list[tuple[str, str]] = [("", "---------")]
        for path, flow_class in flows.items():
            title = f"{flow_class.verbose_name} ({path})" if flow_class.verbose_name else path
            description = flow_class.describe()
            label = f"{title} — {Truncator(description).chars(80)}" if description else title
            choices.append((path, label))
        help_parts = [self._registered_flows_help(flows)]
        stored = self.instance.flow if self.instance.pk else ""
        if stored and not is_registered(stored):
            # Keep the stored value selected and say it is broken: silently switching the
            # select to another flow would change what the data flow runs on the next save.
            choices.append((stored, gettext("%(path)s (not registered)") % {"path": stored}))
            help_parts.insert(
                0,
                format_html(
                    '<strong class="dataflows-invalid">{}</strong>',
                    gettext(
                        "The stored flow %(path)s is not registered, so every run of this data "
                        "flow fails. Choose a registered flow, or deploy the code that defines it."
                    )
                    % {"path": stored},
                ),
            )
        field.choices = choices
        assert isinstance(field.widget, FlowSelect)
        field.widget.descriptions = {path: cls.describe() for path, cls in flows.items()}
        field.help_text = format_html_join("", "<div>{}</div>", ((part,) for part in help_parts))

    @staticmethod
    def _registered_flows_help(flows: dict[str, Any]) -> SafeString:
        if not flows:
            return format_html(
                "{}",
                gettext(
                    "No flows are registered. Define a subclass of django_dataflows.Flow in "
                    "an installed app's flows.py module."
                ),
            )
        items = format_html_join(
            "",
            "<li><code>{}</code>: {}</li>",
            ((path, cls.describe() or "—") for path, cls in flows.items()),
        )
        return format_html(
            '<details class="dataflows-flow-list"><summary>{}</summary><ul>{}</ul></details>',
            gettext("What each registered flow does"),
            items,
        )

    def clean_configuration(self) -> Any:
        # An empty box means "no configuration", not a missing value.
        value = self.cleaned_data.get("configuration")
        return {} if value is None else value


# -- DataFlow ---------------------------------------------------------------------------


def _count_recent_runs(since: datetime, statuses: tuple[str, ...]) -> Coalesce:
    """A correlated subquery counting one flow's runs: no join, no GROUP BY on flows."""
    runs = (
        DataFlowRun.objects.filter(
            data_flow=OuterRef("pk"),
            created_at__gte=since,
            status__in=statuses,
            deleted_at__isnull=True,
        )
        .order_by()
        .values("data_flow")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(runs, output_field=IntegerField()), Value(0))


@admin.register(DataFlow)
class DataFlowAdmin(OwnedFlowsAdminMixin, RunWithInputAdminMixin, _DataFlowModelAdmin):
    form = DataFlowForm
    list_display = (
        "name",
        "flow_display",
        "enabled",
        "overdue_display",
        "interval_display",
        "last_status",
        "last_run_display",
        "next_run_display",
        "success_rate",
        "p50_display",
        "p95_display",
    )
    list_filter = (
        "enabled",
        "last_run_status",
        "flow",
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("name", "description")
    actions = ("run_now", "run_with_input", "backfill", "enable", "disable")
    readonly_fields = (
        "interval_display",
        "overdue_display",
        "consecutive_failures",
        "last_status",
        "last_run_at",
        "next_run_at",
        "created_at",
        "updated_at",
        "statistics_display",
        "downstream_display",
        "generation_display",
    )

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}
        js = ("django_dataflows/schedule_kind.js",)

    def get_fieldsets(self, request: HttpRequest, obj: DataFlow | None = None) -> Any:
        schedule = ["schedule_kind", "run_interval", "cron", "timezone", "catchup"]
        pipeline: list[str] = ["upstream_flows", "wait_for"]
        alerts = ["alert_after", "alert_emails", "disable_after_failures", "max_duration"]
        if obj is not None:
            schedule += ["interval_display", "last_run_at", "last_status", "next_run_at"]
            alerts += ["overdue_display", "consecutive_failures"]
            # Downstream flows may be other teams': named to those who see every flow.
            if may_see_every_flow(request.user):
                pipeline.append("downstream_display")
            pipeline.append("generation_display")
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (None, {"fields": ["name", "description", "owner", "flow", "enabled"]}),
            (_("Schedule"), {"fields": schedule}),
            (_("Pipeline"), {"fields": pipeline}),
            (_("Alerts"), {"fields": alerts}),
            (_("Configuration"), {"fields": ["configuration"]}),
            (_("Execution"), {"fields": ["queue", "max_retries", "timeout"]}),
        ]
        if obj is not None:
            fieldsets.append((_("History"), {"fields": ["created_at", "updated_at"]}))
            fieldsets.append((_("Statistics"), {"fields": ["statistics_display"]}))
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[DataFlow]:
        flows = cast(DataFlowQuerySet, super().get_queryset(request)).with_overdue_since()
        if not sorts_by(request, self, "success_rate"):
            return flows  # the column's figures come from the rollups, a page at a time
        # Sorting every flow by it needs the counts of each (they read a week of runs).
        since = timezone.now() - SUCCESS_RATE_WINDOW
        return flows.annotate(
            recent_rated=_count_recent_runs(since, RATED_STATUSES),
            recent_succeeded=_count_recent_runs(since, (RunStatus.SUCCESS,)),
        )

    # -- columns ----------------------------------------------------------------------

    @admin.display(description=_("flow"), ordering="flow")
    def flow_display(self, obj: DataFlow) -> str:
        if is_registered(obj.flow):
            return obj.flow
        return format_html(
            '{} <span class="dataflows-badge dataflows-badge--failed">{}</span>',
            obj.flow,
            gettext("not registered"),
        )

    @admin.display(description=_("schedule"), ordering="run_interval")
    def interval_display(self, obj: DataFlow) -> str:
        return describe_schedule(obj)

    @admin.display(description=_("overdue"))
    def overdue_display(self, obj: DataFlow) -> str:
        if not obj.is_overdue:
            return ""
        since = obj.compute_overdue_since()
        return format_html(
            '<span class="dataflows-badge dataflows-badge--overdue" title="{}">{}</span>',
            gettext("No successful run for %(seconds)s seconds (alert after).")
            % {"seconds": obj.alert_after},
            gettext("overdue since %(when)s")
            % {"when": date_format(timezone.localtime(since), "DATETIME_FORMAT")}
            if since
            else gettext("overdue"),
        )

    @admin.display(description=_("downstream flows"))
    def downstream_display(self, obj: DataFlow) -> str:
        return flow_links(obj.downstream_flows.all()) or gettext("none")

    @admin.display(description=_("latest generation"))
    def generation_display(self, obj: DataFlow) -> str:
        """The flow's latest upstream-triggered run and the upstream runs it took in."""
        run = (
            obj.runs.filter(generation__isnull=False)
            .order_by("-generation")
            .prefetch_related("upstream_runs__data_flow")
            .first()
        )
        if run is None:
            return gettext("none yet")
        return format_html(
            '<a href="{}">{}</a> {} {}',
            reverse("admin:dataflows_dataflowrun_change", args=[run.pk]),
            gettext("generation %(number)s") % {"number": run.generation},
            status_badge(run.status),
            upstream_run_links(run),
        )

    @admin.display(description=_("last status"), ordering="last_run_status")
    def last_status(self, obj: DataFlow) -> str:
        return status_badge(obj.last_run_status)

    @admin.display(description=_("last run"), ordering="last_run_at")
    def last_run_display(self, obj: DataFlow) -> str:
        return relative_time(obj.last_run_at) if obj.last_run_at else gettext("never")

    @admin.display(description=_("next run"), ordering="next_run_at")
    def next_run_display(self, obj: DataFlow) -> str:
        if not obj.enabled:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("disabled"))
        if obj.next_run_at is None:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("no schedule"))
        if obj.next_run_at <= timezone.now():
            return format_html(
                '<time datetime="{}">{}</time>', obj.next_run_at.isoformat(), gettext("due now")
            )
        return relative_time(obj.next_run_at)

    @admin.display(
        description=_("success rate (7 days)"),
        ordering=Cast(F("recent_succeeded"), FloatField()) / NullIf(F("recent_rated"), Value(0)),
    )
    def success_rate(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        rated = stats["success"] + stats["failed"] + stats["timed_out"] if stats else 0
        if not stats or stats["success_rate"] is None:
            return format_html('<span class="dataflows-quiet">{}</span>', gettext("no runs"))
        return format_html(
            '<span title="{}">{}%</span>',
            gettext(
                "%(succeeded)d of the %(rated)d runs finished in the last 7 days succeeded "
                "(cancelled runs are not counted)."
            )
            % {"succeeded": stats["success"], "rated": rated},
            round(stats["success_rate"]),
        )

    @admin.display(description=_("p50 (7 days)"))
    def p50_display(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        return format_milliseconds(stats["p50_duration_ms"] if stats else None)

    @admin.display(description=_("p95 (7 days)"))
    def p95_display(self, obj: DataFlow) -> str:
        stats = flow_stats(obj)
        return format_milliseconds(stats["p95_duration_ms"] if stats else None)

    @admin.display(description=_("statistics"))
    def statistics_display(self, obj: DataFlow) -> str:
        since = timezone.now() - SUCCESS_RATE_WINDOW
        rows = (
            (gettext("last 7 days"), obj.runs.stats(since=since)),
            (gettext("all time"), obj.runs.stats()),
        )
        return format_html(
            '<table class="dataflows-stats"><thead><tr><th></th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            gettext("runs"),
            gettext("success rate"),
            gettext("p50"),
            gettext("p95"),
            gettext("max"),
            format_html_join(
                "",
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        label,
                        stats["total"],
                        "-" if stats["success_rate"] is None else f"{stats['success_rate']:g}%",
                        format_milliseconds(stats["p50_duration_ms"]),
                        format_milliseconds(stats["p95_duration_ms"]),
                        format_milliseconds(stats["max_duration_ms"]),
                    )
                    for label, stats in rows
                ),
            ),
        )

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """Attach each listed flow's statistics, for the whole page in at most two queries."""
        changelist = super().get_changelist_instance(request)
        flows = list(changelist.result_list)  # evaluated once; the template reuses it
        stats = DataFlowRun.objects.filter(
            data_flow__in=[flow.pk for flow in flows]
        ).stats_per_flow(since=timezone.now() - SUCCESS_RATE_WINDOW)
        for flow in flows:
            flow.dataflows_stats = stats.get(flow.pk)
        return changelist

    # -- actions ----------------------------------------------------------------------

    @admin.action(description=_("Run now"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        run_after_response()  # with the in-process backend: answer first, then run
        for data_flow in queryset:
            if not self.has_run_permission(request, data_flow):
                self._refuse(request, data_flow)
                continue
            try:
                run = trigger_run(
                    data_flow,
                    trigger=RunTrigger.MANUAL,
                    user=request.user,
                    on_recorded=lambda run: record(request, AuditAction.RUN_STARTED, run=run),
                )
            except (RunAlreadyActive, EnqueueFailed) as exc:
                self.message_user(
                    request,
                    gettext("“%(name)s” was not run: %(error)s")
                    % {"name": data_flow.name, "error": exc},
                    messages.ERROR,
                )
                continue
            self._report_run(request, data_flow, run)

    def _refuse(self, request: HttpRequest, data_flow: DataFlow) -> None:
        self.message_user(
            request,
            gettext("You may not change “%(name)s”.") % {"name": data_flow.name},
            messages.ERROR,
        )

    def _report_run(self, request: HttpRequest, data_flow: DataFlow, run: DataFlowRun) -> None:
        link = format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflowrun_change", run.pk, site=self.admin_site),
            gettext("run %(id)s") % {"id": run.pk},
        )
        if run.status == RunStatus.SUCCESS:
            message = format_html(
                gettext("“{name}”: {run} succeeded."), name=data_flow.name, run=link
            )
            level = messages.SUCCESS
        elif run.status in FAILURE_STATUSES or run.status == RunStatus.CANCELLED:
            message = format_html(
                gettext("“{name}”: {run} {status}: {error}"),
                name=data_flow.name,
                run=link,
                status=run.get_status_display().lower(),
                error=run.error_message,
            )
            level = messages.ERROR
        else:  # an asynchronous backend has it, or it starts when the transaction commits
            message = format_html(gettext("“{name}”: {run} queued."), name=data_flow.name, run=link)
            level = messages.INFO
        self.message_user(request, message, level)

    def get_urls(self) -> list[URLPattern]:
        return [
            url_path(
                "graph/",
                self.admin_site.admin_view(self.graph_view),
                name="dataflows_dataflow_graph",
            ),
            *super().get_urls(),
        ]

    def graph_view(self, request: HttpRequest) -> HttpResponse:
        """Every flow with upstream or downstream flows, as a server-rendered SVG graph."""
        # The graph names every flow in a pipeline: for users who see every flow.
        if not self.has_view_permission(request) or not may_see_every_flow(request.user):
            raise PermissionDenied
        svg, alone = dependency_graph_svg(
            lambda pk: _admin_url("dataflow_change", pk, site=self.admin_site)
        )
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Flow dependencies"),
            "opts": self.opts,
            "graph": svg,
            "alone": alone,
        }
        return TemplateResponse(request, "admin/dataflows/dataflow/graph.html", context)

    @admin.action(description=_("Backfill past slots…"), permissions=["run"])
    def backfill(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> HttpResponse:
        """Open the new-backfill form for the first selected flow."""
        data_flow = queryset.order_by("name").first()
        query = {"data_flow": str(data_flow.pk)} if data_flow is not None else None
        return HttpResponseRedirect(_admin_url("backfill_add", site=self.admin_site, query=query))

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """The delete pages refuse a flow with an active run, as the model does.

        Each such flow's active run is listed as what protects it, so the confirmation page
        says why and offers no "Yes"; ``DataFlow.delete()`` refuses it anyway.
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        pks = [obj.pk for obj in objs]
        active = DataFlowRun.objects.active().filter(data_flow__in=pks).select_related("data_flow")
        protected = list(protected) + [
            format_html(
                gettext("{run}: still {status}; cancel it or wait for it to finish"),
                run=str(run),
                status=run.get_status_display().lower(),
            )
            for run in active
        ]
        return deleted, counts, perms_needed, protected

    def has_enable_permission(self, request: HttpRequest) -> bool:
        """Enabling makes the heartbeat start runs: it needs change and run permissions."""
        return self.has_change_permission(request) and self.has_run_permission(request)

    def get_form(
        self, request: HttpRequest, obj: DataFlow | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        # The form refuses making the flow due for a user who may not run it, and offers as
        # upstream flows only the flows this user sees.
        upstream_choices = DataFlow.objects.visible_to(request.user).order_by("name")
        attributes = {
            "may_run": self.has_run_permission(request),
            "upstream_choices": upstream_choices,
        }
        return type(form.__name__, (form,), attributes)

    @admin.action(description=_("Enable"), permissions=["enable"])
    def enable(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        count = self._set_enabled(request, queryset, enabled=True)
        self.message_user(
            request,
            ngettext(
                "%(count)d data flow was enabled.", "%(count)d data flows were enabled.", count
            )
            % {"count": count},
            messages.SUCCESS,
        )

    @admin.action(description=_("Disable"), permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[DataFlow]) -> None:
        count = self._set_enabled(request, queryset, enabled=False)
        self.message_user(
            request,
            ngettext(
                "%(count)d data flow was disabled.", "%(count)d data flows were disabled.", count
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def _set_enabled(
        self, request: HttpRequest, queryset: QuerySet[DataFlow], *, enabled: bool
    ) -> int:
        # One set_enabled() per flow, never queryset.update(): it recomputes next_run_at.
        changed = 0
        label = str(DataFlow._meta.get_field("enabled").verbose_name)
        with transaction.atomic():
            for data_flow in queryset.filter(enabled=not enabled):
                if not self.has_change_permission(request, data_flow):
                    self._refuse(request, data_flow)
                    continue
                data_flow.set_enabled(enabled)
                self.log_change(request, data_flow, [{"changed": {"fields": [label]}}])
                action = AuditAction.FLOW_ENABLED if enabled else AuditAction.FLOW_DISABLED
                record(request, action, data_flow=data_flow)
                changed += 1
        return changed

    # -- pages ------------------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "dataflows_health": collect_health()}
        if self._can_view_runs(request):
            extra_context["dataflows_runs_links"] = {
                "active": _admin_url(
                    "dataflowrun_changelist",
                    site=self.admin_site,
                    query={"status__in": ",".join(ACTIVE_STATUSES)},
                ),
                "failures": _admin_url(
                    "dataflowrun_changelist",
                    site=self.admin_site,
                    query={
                        "status__in": ",".join(FAILURE_STATUSES),
                        "ended_at__gte": (timezone.now() - FAILURE_WINDOW).isoformat(),
                    },
                ),
            }
        return super().changelist_view(request, extra_context)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: DataFlow | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk is not None:
            context.update(self._history_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _history_context(self, request: HttpRequest, obj: DataFlow) -> dict[str, Any]:
        can_view_runs = self._can_view_runs(request)
        runs = obj.runs.select_related("triggered_by")[:RECENT_RUNS_SHOWN]
        now = timezone.now()
        return {
            "dataflows_history": True,
            "recent_runs": [
                {"run": run, "duration": format_duration(run.duration)} for run in runs
            ],
            # Bounded: a busy flow has hundreds of thousands of runs.
            "run_count": obj.runs.order_by()[: EXACT_COUNT_LIMIT + 1].count(),
            "run_count_limit": EXACT_COUNT_LIMIT,
            "can_view_runs": can_view_runs,
            "can_view_backtraces": request.user.has_perm(BACKTRACE_PERMISSION),
            "run_history_url": _admin_url(
                "dataflowrun_changelist",
                site=self.admin_site,
                query={"data_flow__id__exact": str(obj.pk)},
            )
            if can_view_runs
            else None,
            "upcoming_runs": [
                (moment, relative_time(moment, now), *_in_zone_and_utc(obj, moment))
                for moment in obj.upcoming_runs(UPCOMING_RUNS_SHOWN, now=now)
            ],
            "schedule_error": obj.schedule_error,
        }

    def _can_view_runs(self, request: HttpRequest) -> bool:
        try:
            run_admin = self.admin_site.get_model_admin(DataFlowRun)
        except NotRegistered:  # a project that hides the run history
            return False
        return run_admin.has_view_permission(request)


def _in_zone_and_utc(data_flow: DataFlow, moment: datetime) -> tuple[str, str]:
    """``moment`` on the flow's wall clock (its zone named) and in UTC."""
    if data_flow.cron:  # upcoming_runs() is empty when the zone is invalid
        label = zone_name(data_flow.timezone)
        local = moment.astimezone(get_zone(data_flow.timezone))
    else:
        label = timezone.get_current_timezone_name()
        local = timezone.localtime(moment)
    return (
        f"{local:%Y-%m-%d %H:%M %Z} ({label})",
        f"{moment.astimezone(datetime_utc):%Y-%m-%d %H:%M} UTC",
    )


# -- DataFlowRun ------------------------------------------------------------------------


class DeletedRunsFilter(admin.SimpleListFilter):
    """Soft-deleted runs are hidden unless asked for; they stay until ``dataflows_prune``."""

    title = _("deleted")
    parameter_name = "deleted"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", gettext("Deleted only")), ("all", gettext("All, deleted included"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "all":
            return queryset
        return queryset.filter(deleted_at__isnull=True)

    def choices(self, changelist: Any) -> Any:
        choices = iter(super().choices(changelist))
        default = next(choices)  # Django calls it "All"; here it hides deleted runs
        default["display"] = gettext("Not deleted")
        yield default
        yield from choices


@admin.register(DataFlowRun)
class DataFlowRunAdmin(
    RunLogAdminMixin,
    OwnedRunsAdminMixin,
    LiveRunAdminMixin,
    RunControlAdminMixin,
    _DataFlowRunModelAdmin,
):
    """The run history: read-only; only superusers may delete runs.

    Users with ``dataflows.run_dataflow`` may cancel, pause, resume and retry runs (actions,
    and buttons on the run page).
    """

    list_display = (
        "id",
        "flow_link",
        "status_display",
        "progress_display",
        "trigger",
        "triggered_by",
        "created_at",
        "started_at",
        "ended_at",
        "duration_display",
        "attempt",
    )
    list_display_links = ("id",)
    list_filter = ("status", "trigger", FlowFilter, CreatedWithinFilter, DeletedRunsFilter)
    list_select_related = ("data_flow", "triggered_by")
    search_fields = ("data_flow__name", "error_message", "task_id")
    # No date hierarchy and no count of the whole table: both read every run.
    paginator = BoundedCountPaginator
    show_full_result_count = False
    actions = ("cancel_runs", "pause_runs", "resume_runs", "retry_runs")
    inlines = (DataFlowRunStepInline,)
    readonly_fields = (
        "input_display",
        "progress_display",
        "cancel_requested_at",
        "pause_requested_at",
        "flow_link",
        "status_display",
        "trigger",
        "triggered_by",
        "attempt",
        "scheduled_for",
        "created_at",
        "started_at",
        "ended_at",
        "duration_display",
        "error_message",
        "backtrace",
        "result_display",
        "queue",
        "task_id",
        "started_by_display",
    )

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}

    @admin.display(description=_("started by"))
    def started_by_display(self, obj: DataFlowRun) -> str:
        """What started the run: its upstream runs, its backfill, its schedule slot."""
        parts = []
        links = upstream_run_links(obj)
        if links:
            parts.append(
                format_html("{} {}", gettext("generation %(n)s,") % {"n": obj.generation}, links)
            )
        if obj.backfill_id is not None:
            parts.append(
                format_html(
                    '<a href="{}">{}</a>',
                    _admin_url("backfill_change", obj.backfill_id, site=self.admin_site),
                    gettext("backfill %(id)s") % {"id": obj.backfill_id},
                )
            )
        if obj.scheduled_for is not None:
            parts.append(
                format_html(
                    '{} <time datetime="{}">{}</time>',
                    gettext("slot"),
                    obj.scheduled_for.isoformat(),
                    date_format(timezone.localtime(obj.scheduled_for), "DATETIME_FORMAT"),
                )
            )
        return format_html_join("; ", "{}", ((part,) for part in parts)) or "-"

    def get_fieldsets(self, request: HttpRequest, obj: DataFlowRun | None = None) -> Any:
        outcome = ["error_message", "backtrace", "result_display"]
        if not request.user.has_perm(BACKTRACE_PERMISSION):
            outcome.remove("backtrace")
        return [
            (
                None,
                {
                    "fields": [
                        "flow_link",
                        "status_display",
                        "trigger",
                        "started_by_display",
                        "triggered_by",
                        "attempt",
                    ]
                },
            ),
            (
                _("Timing"),
                {
                    "fields": [
                        "scheduled_for",
                        "created_at",
                        "started_at",
                        "ended_at",
                        "duration_display",
                    ]
                },
            ),
            (_("Input and progress"), {"fields": ["input_display", "progress_display"]}),
            (_("Outcome"), {"fields": outcome}),
            (_("Control"), {"fields": ["cancel_requested_at", "pause_requested_at"]}),
            (_("Backend"), {"fields": ["queue", "task_id"]}),
            *self.run_log_fieldsets(),
        ]

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: DataFlowRun | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk is not None:
            context.update(self.run_controls_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: DataFlowRun | None = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.display(description=_("data flow"), ordering="data_flow__name")
    def flow_link(self, obj: DataFlowRun) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflow_change", obj.data_flow_id, site=self.admin_site),
            obj.data_flow.name,
        )

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: DataFlowRun) -> str:
        return status_badge(obj.status)

    @admin.display(description=_("duration"))
    def duration_display(self, obj: DataFlowRun) -> str:
        return format_duration(obj.duration) or "-"

    @admin.display(description=_("error backtrace"))
    def backtrace(self, obj: DataFlowRun) -> str:
        if not obj.error_backtrace:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', obj.error_backtrace)

    @admin.display(description=_("input"))
    def input_display(self, obj: DataFlowRun) -> str:
        if not obj.input:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', pretty_json(obj.input))

    @admin.display(description=_("progress"))
    def progress_display(self, obj: DataFlowRun) -> str:
        return progress_html(obj.progress)

    @admin.display(description=_("result"))
    def result_display(self, obj: DataFlowRun) -> str:
        if obj.result is None:
            return "-"
        return format_html('<pre class="dataflows-pre">{}</pre>', pretty_json(obj.result))


# -- backfills ----------------------------------------------------------------------------


class BackfillForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new backfill: checked and recorded by ``DataFlow.backfill()`` (nothing else)."""

    force = forms.BooleanField(
        label=_("Force"), required=False, help_text=_("Allow more than 10,000 slots.")
    )

    class Meta:
        model = Backfill
        fields = ("data_flow", "start", "end", "rerun")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        data_flow, start, end = (cleaned.get(name) for name in ("data_flow", "start", "end"))
        if self.errors or data_flow is None or start is None or end is None:
            return cleaned
        try:
            self.created = data_flow.backfill(
                start,
                end,
                rerun=bool(cleaned.get("rerun")),
                user=getattr(self, "user", None),
                force=bool(cleaned.get("force")),
            )
        except ValidationError as exc:
            raise ValidationError(exc.messages) from exc
        return cleaned

    def _post_clean(self) -> None:
        # The backfill was checked and written by DataFlow.backfill(): no second validation.
        if hasattr(self, "created"):
            self.instance = self.created


def backfill_progress(backfill: Backfill) -> str:
    return format_html(
        '<span class="dataflows-progress"><progress max="{}" value="{}"></progress>{}</span>',
        backfill.total or 1,
        backfill.done,
        gettext("%(done)s of %(total)s slots") % {"done": backfill.done, "total": backfill.total},
    )


@admin.register(Backfill)
class BackfillAdmin(_BackfillModelAdmin):
    """Backfills with their progress; new ones through the form (or the flows' action)."""

    form = BackfillForm
    list_display = (
        "id",
        "flow_link",
        "start",
        "end",
        "rerun",
        "status_display",
        "progress_display",
        "created_by",
        "created_at",
    )
    list_filter = ("status", "data_flow")
    list_select_related = ("data_flow", "created_by")
    actions = ("cancel_backfills",)

    class Media:
        css = {"all": ("django_dataflows/admin.css",)}

    def get_fields(self, request: HttpRequest, obj: Backfill | None = None) -> Any:
        if obj is None:
            return ("data_flow", "start", "end", "rerun", "force")
        return (
            "flow_link",
            "start",
            "end",
            "rerun",
            "status_display",
            "progress_display",
            "next_slot",
            "created_by",
            "created_at",
            "ended_at",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Backfill | None = None) -> Any:
        return () if obj is None else self.get_fields(request, obj)

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form_class = super().get_form(request, obj, change, **kwargs)
        form_class.user = request.user  # type: ignore[attr-defined]
        return form_class

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_run_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(RUN_PERMISSION))

    def save_model(self, request: HttpRequest, obj: Backfill, form: Any, change: bool) -> None:
        pass  # DataFlow.backfill() saved it while the form was checked

    @admin.display(description=_("data flow"), ordering="data_flow__name")
    def flow_link(self, obj: Backfill) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            _admin_url("dataflow_change", obj.data_flow_id, site=self.admin_site),
            obj.data_flow.name,
        )

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Backfill) -> str:
        return format_html(
            '<span class="dataflows-badge dataflows-badge--{}">{}</span>',
            obj.status,
            obj.get_status_display(),
        )

    @admin.display(description=_("progress"))
    def progress_display(self, obj: Backfill) -> str:
        return backfill_progress(obj)

    @admin.action(description=_("Cancel selected backfills"), permissions=["run"])
    def cancel_backfills(self, request: HttpRequest, queryset: QuerySet[Backfill]) -> None:
        cancelled = sum(backfill.cancel() for backfill in queryset)
        self.message_user(
            request,
            gettext("%(count)s backfills cancelled; their current runs finish.")
            % {"count": cancelled},
            messages.SUCCESS,
        )
