"""``DataFlow`` (a schedulable flow) and ``DataFlowRun`` (one execution of it)."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

from django.conf import settings
from django.core.exceptions import EmptyResultSet, ImproperlyConfigured, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator, validate_email
from django.db import IntegrityError, connection, connections, models, transaction
from django.db.models import (
    Count,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    Window,
)
from django.db.models.expressions import Col
from django.db.models.functions import Coalesce, Now, RowNumber, TruncHour
from django.db.models.lookups import Lookup
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

import django_dataflows.histograms as histograms
import django_dataflows.rollup_levels as rollup_levels
import django_dataflows.rollup_sql as rollup_sql
from django_dataflows.clock import MillisecondsBetween, database_now
from django_dataflows.conf import app_settings
from django_dataflows.exceptions import (
    FlowHasActiveRun,
    FlowNotRegistered,
    InvalidRunState,
)
from django_dataflows.flows import Flow, get_flow_class
from django_dataflows.schedules import (
    InvalidSchedule,
    next_cron_slot,
    previous_cron_slot,
    upcoming_cron_slots,
    validate_cron,
    validate_timezone,
)
from django_dataflows.signals import runs_changed
from django_dataflows.validators import (
    configuration_errors,
    storable_json_problem,
    validate_configuration_object,
    validate_json_object,
    validate_queue_name,
    validate_registered_flow,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


class RunStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    IN_PROGRESS = "in_progress", _("In progress")
    PAUSED = "paused", _("Paused")
    SUCCESS = "success", _("Success")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    TIMED_OUT = "timed_out", _("Timed out")


#: A flow has at most one run in these statuses at a time.
ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.IN_PROGRESS, RunStatus.PAUSED)
FINISHED_STATUSES = (
    RunStatus.SUCCESS,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.TIMED_OUT,
)
#: Finished statuses the success rate counts (a cancelled run is neither success nor failure).
RATED_STATUSES = (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMED_OUT)


class RunTrigger(models.TextChoices):
    SCHEDULE = "schedule", _("Schedule (heartbeat)")
    MANUAL = "manual", _("Manual")
    API = "api", _("API")
    COMMAND = "command", _("Management command")
    RETRY = "retry", _("Retry")
    UPSTREAM = "upstream", _("Upstream flows succeeded")
    BACKFILL = "backfill", _("Backfill")


class WaitFor(models.TextChoices):
    """Which upstream flows must have succeeded before a downstream flow runs."""

    ALL = "all", _("All upstream flows")
    ANY = "any", _("Any upstream flow")


class Catchup(models.TextChoices):
    """What a scheduled flow does with the slots it missed (downtime, disabled)."""

    LATEST = "latest", _("Run once for the missed slots")
    SKIP = "skip", _("Skip slots found late")
    ALL = "all", _("Run every missed slot")


def next_slot_after(slot: datetime, interval: int, now: datetime) -> datetime:
    """The first slot on ``slot``'s grid (``slot + k * interval``) that is later than ``now``.

    Advancing from the slot, not from ``now``, keeps a schedule from drifting; jumping past
    every missed slot at once means a flow that was down for a day runs once, not once per
    missed slot.
    """
    if slot > now:
        return slot
    missed = math.floor((now - slot).total_seconds() / interval) + 1
    return slot + timedelta(seconds=missed * interval)


def next_slot_for(data_flow: DataFlow, slot: datetime, now: datetime) -> datetime:
    """The flow's next slot after claiming ``slot`` at ``now``.

    Missed slots collapse (the next slot is the first one after ``now``) unless the flow's
    ``catchup`` is ``"all"``: then it is the slot right after ``slot``, past or not, so
    every missed slot runs in turn. Raises ``InvalidSchedule`` for a cron expression or
    zone stored without validation, and for a flow without a schedule.
    """
    if data_flow.catchup == Catchup.ALL:
        now = min(slot, now)
    if data_flow.cron:
        return next_cron_slot(data_flow.cron, data_flow.timezone, max(slot, now))
    if data_flow.run_interval is None:
        raise InvalidSchedule(f"Data flow {data_flow.name!r} has neither cron nor run_interval.")
    return next_slot_after(slot, data_flow.run_interval, now)


def previous_slot_for(data_flow: DataFlow, slot: datetime) -> datetime | None:
    """The slot of the flow's schedule just before ``slot`` (``None`` without a schedule).

    With ``slot`` this bounds a run's data interval ``[previous_slot, slot)``.
    """
    if data_flow.cron:
        return previous_cron_slot(data_flow.cron, data_flow.timezone, slot)
    if data_flow.run_interval is None:
        return None
    return slot - timedelta(seconds=data_flow.run_interval)


def split_alert_emails(value: str) -> list[str]:
    """The addresses in an ``alert_emails`` value (commas, semicolons or whitespace)."""
    return [address for address in value.replace(";", ",").replace(",", " ").split() if address]


def validate_alert_emails(value: str) -> None:
    for address in split_alert_emails(value):
        try:
            validate_email(address)
        except ValidationError:
            raise ValidationError(
                _("%(address)s is not a valid e-mail address."),
                code="invalid_email",
                params={"address": repr(address)},
            ) from None


class Seconds(Func):
    """An integer column of seconds as a duration, to add to a datetime in SQL.

    Databases without an interval type (SQLite, MySQL) store durations as microseconds.
    """

    output_field = models.DurationField()
    template = "(%(expressions)s * 1000000)"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="(%(expressions)s * INTERVAL '1 second')", **extra
        )

    def as_oracle(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="NUMTODSINTERVAL(%(expressions)s, 'SECOND')", **extra
        )


#: What seeing flows and runs takes for users who do not own them.
VIEW_FLOW_PERMISSION = "dataflows.view_dataflow"
VIEW_RUN_PERMISSION = "dataflows.view_dataflowrun"
#: What an owner may do to their own flows without the model permissions...
OWNER_VIEW_PERMISSIONS = frozenset({VIEW_FLOW_PERMISSION, VIEW_RUN_PERMISSION})
#: ...and, with ``DATAFLOWS["OWNERS_MANAGE_OWN_FLOWS"]``, also this.
OWNER_MANAGE_PERMISSIONS = frozenset({"dataflows.change_dataflow", "dataflows.run_dataflow"})


def _is_active_user(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def may_see_every_run(user: Any) -> bool:
    """Whether ``user`` sees every run: the view (or change) model permission of runs."""
    return _is_active_user(user) and (
        user.has_perm(VIEW_RUN_PERMISSION) or user.has_perm("dataflows.change_dataflowrun")
    )


def owns_a_flow(user: Any) -> bool:
    """Whether ``user`` owns at least one flow (one indexed query)."""
    return _is_active_user(user) and DataFlow.objects.filter(owner_id=user.pk).exists()


def may_see_every_flow(user: Any) -> bool:
    """Whether ``user`` sees every flow: the view (or change) model permission.

    Everyone else sees only the flows they own (``DataFlow.objects.visible_to(user)``);
    the API, the admin, the streams and the commands' ``--as-user`` all scope through here.
    """
    return _is_active_user(user) and (
        user.has_perm(VIEW_FLOW_PERMISSION) or user.has_perm("dataflows.change_dataflow")
    )


class DataFlowQuerySet(models.QuerySet["DataFlow"]):
    def enabled(self) -> DataFlowQuerySet:
        return self.filter(enabled=True)

    def visible_to(self, user: Any) -> DataFlowQuerySet:
        """The flows among these that ``user`` may see (see :func:`may_see_every_flow`)."""
        if may_see_every_flow(user):
            return self
        if not _is_active_user(user):
            return self.none()
        return self.filter(owner_id=user.pk)

    def with_active_run(self) -> DataFlowQuerySet:
        """The flows among these that have an active run."""
        return self.filter(
            Exists(DataFlowRun.objects.filter(data_flow=OuterRef("pk"), status__in=ACTIVE_STATUSES))
        )

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the flows and their history; ``FlowHasActiveRun`` if any has an active run.

        The flows are locked first (in key order), as a trigger locks its flow: no run can
        start between the check and the delete. The admin, the API and code all delete
        through here or :meth:`DataFlow.delete`.
        """
        flows = DataFlow.objects.db_manager(self.db)
        with transaction.atomic(using=self.db):
            pks = list(row_lock(self.order_by("pk")).values_list("pk", flat=True))
            busy = list(flows.filter(pk__in=pks).with_active_run().values_list("name", flat=True))
            if busy:
                raise FlowHasActiveRun(sorted(busy))
            return super(DataFlowQuerySet, flows.filter(pk__in=pks)).delete()

    def due_to_run(self, now: datetime | None = None) -> DataFlowQuerySet:
        """Enabled flows whose ``next_run_at`` has come (uses the due index).

        ``now`` defaults to the database's clock, which schedules are kept by.
        """
        return self.filter(enabled=True, next_run_at__lte=now or database_now())

    def with_overdue_since(self) -> DataFlowQuerySet:
        """Annotate ``overdue_since``: when each flow is (or will be) overdue.

        That is ``alert_after`` seconds after its last successful run ended, or after it was
        created if it never succeeded; ``None`` without ``alert_after``. One correlated
        subquery per flow, on the (data_flow, created_at) index: runs of one flow never
        overlap, so its newest successful run is also the one that ended last.
        """
        last_success = (
            DataFlowRun.objects.filter(data_flow=OuterRef("pk"), status=RunStatus.SUCCESS)
            .order_by("-created_at")
            .values("ended_at")[:1]
        )
        return self.annotate(
            overdue_since=ExpressionWrapper(
                Coalesce(Subquery(last_success), F("created_at")) + Seconds(F("alert_after")),
                output_field=models.DateTimeField(),
            )
        )

    def overdue(self, now: datetime | None = None) -> DataFlowQuerySet:
        """Enabled flows with ``alert_after`` and no successful run for that long.

        Each row carries ``overdue_since``, the instant it became overdue.
        """
        return (
            self.filter(enabled=True, alert_after__isnull=False)
            .with_overdue_since()
            .filter(Q(overdue_since__lte=now or timezone.now()))
        )


#: DataFlow fields written by the scheduler, the executor and the alerts, never by a plain
#: save().
SCHEDULER_FIELDS = frozenset(
    {
        "next_run_at",
        "last_run_at",
        "last_run_status",
        "state",
        "consecutive_failures",
        "overdue_episode_since",
        "upstream_generation",
        "in_pipeline",
    }
)


def row_lock(queryset: models.QuerySet[Any]) -> models.QuerySet[Any]:
    """Lock the selected rows for the rest of the transaction (a no-op on SQLite).

    ``FOR NO KEY UPDATE`` where the database has it: it still excludes other claims, but
    not the ``FOR KEY SHARE`` lock a foreign-key check takes when a run is inserted, which
    would otherwise let a manual trigger and a heartbeat deadlock.
    """
    features = connection.features
    return queryset.select_for_update(no_key=features.has_select_for_no_key_update)


class DataFlow(models.Model):
    """A flow to run on a schedule (``run_interval`` or ``cron``), with its configuration."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    description = models.TextField(_("description"), blank=True)
    flow = models.CharField(
        _("flow"),
        max_length=255,
        validators=[validate_registered_flow],
        help_text=_("Dotted path of a registered Flow subclass, e.g. myapp.flows.ProductSync."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    configuration = models.JSONField(
        _("configuration"),
        default=dict,
        blank=True,
        encoder=DjangoJSONEncoder,
        validators=[validate_json_object],
        help_text=_("A JSON object passed to the flow as self.configuration."),
    )
    run_interval = models.PositiveIntegerField(
        _("run interval"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Seconds between scheduled runs; empty for a cron schedule."),
    )
    queue = models.CharField(
        _("queue"),
        max_length=100,
        blank=True,
        validators=[validate_queue_name],
        help_text=_("Queue for asynchronous backends; empty means DATAFLOWS['DEFAULT_QUEUE']."),
    )
    max_retries = models.PositiveSmallIntegerField(
        _("max retries"),
        null=True,
        blank=True,
        help_text=_("Overrides DATAFLOWS['MAX_RETRIES'] for this flow."),
    )
    timeout = models.PositiveIntegerField(
        _("timeout"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Seconds; overrides DATAFLOWS['RUN_TIMEOUT'] for this flow."),
    )
    last_run_at = models.DateTimeField(_("last run at"), null=True, blank=True, editable=False)
    last_run_status = models.CharField(
        _("last run status"), max_length=20, choices=RunStatus.choices, blank=True, editable=False
    )
    next_run_at = models.DateTimeField(
        _("next run at"), null=True, blank=True, default=timezone.now, editable=False
    )
    state = models.JSONField(
        _("state"),
        default=dict,
        blank=True,
        encoder=DjangoJSONEncoder,
        editable=False,
        help_text=_(
            "A JSON object the flow keeps between runs (self.state); saved by the executor "
            "with a successful run, never by a plain save()."
        ),
    )
    # The schedule fields below come after every use of django.utils.timezone in this class
    # body: the field named ``timezone`` shadows the module from here on.
    cron = models.CharField(
        _("cron expression"),
        max_length=100,
        blank=True,
        validators=[validate_cron],
        help_text=_(
            "Five fields (minute hour day-of-month month day-of-week), e.g. 30 2 * * 1-5, or "
            "@hourly, @daily, @weekly, @monthly, @yearly; empty for an interval schedule."
        ),
    )
    timezone = models.CharField(
        _("time zone"),
        max_length=64,
        blank=True,
        validators=[validate_timezone],
        help_text=_(
            "IANA name the cron expression is read in, e.g. Europe/Berlin; empty means "
            "settings.TIME_ZONE."
        ),
    )
    alert_after = models.PositiveIntegerField(
        _("alert after"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_(
            "Seconds without a successful run after which the flow is overdue "
            "(a dead man's switch); empty for never."
        ),
    )
    alert_emails = models.TextField(
        _("alert e-mails"),
        blank=True,
        validators=[validate_alert_emails],
        help_text=_(
            "Addresses told when a run fails, the flow is overdue, or it recovers (commas or "
            "new lines); empty means DATAFLOWS['ALERT_EMAILS']."
        ),
    )
    disable_after_failures = models.PositiveSmallIntegerField(
        _("disable after failures"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_("Disable the flow after this many consecutive failed runs; empty for never."),
    )
    consecutive_failures = models.PositiveIntegerField(
        _("consecutive failures"),
        default=0,
        editable=False,
        help_text=_("Failed runs since the last success (the current failure episode)."),
    )
    overdue_episode_since = models.DateTimeField(
        _("overdue episode since"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("When the overdue episode already announced began; cleared by a success."),
    )
    max_duration = models.PositiveIntegerField(
        _("max duration"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_(
            "Seconds a run may take before it is late: one alert, and it keeps running; "
            "empty for no limit."
        ),
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="owned_data_flows",
        verbose_name=_("owner"),
        help_text=_(
            "Sees this flow and its runs without the model permissions; with "
            "DATAFLOWS['OWNERS_MANAGE_OWN_FLOWS'] also edits, starts and controls it."
        ),
    )
    upstream_flows = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="downstream_flows",
        verbose_name=_("upstream flows"),
        help_text=_("The flow runs (trigger upstream) after these flows have succeeded."),
    )
    wait_for = models.CharField(
        _("wait for"),
        max_length=10,
        choices=WaitFor.choices,
        default=WaitFor.ALL,
        # Also in the database: rows written by raw SQL (bulk loads, benchmarks) get it.
        db_default=WaitFor.ALL,
        help_text=_("Run after all upstream flows have succeeded, or after any one of them."),
    )
    catchup = models.CharField(
        _("catch-up"),
        max_length=10,
        choices=Catchup.choices,
        default=Catchup.LATEST,
        db_default=Catchup.LATEST,
        help_text=_(
            "Missed slots: run once (latest), drop slots found late (skip), or run every "
            "one, oldest first (all)."
        ),
    )
    in_pipeline = models.BooleanField(
        _("in a pipeline"),
        default=False,
        db_default=False,
        editable=False,
        help_text=_("Has upstream or downstream flows (kept with them; spares a lookup)."),
    )
    upstream_generation = models.PositiveBigIntegerField(
        _("upstream generation"),
        default=0,
        db_default=0,
        editable=False,
        help_text=_("How many upstream-triggered runs the flow has had."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects: ClassVar[DataFlowQuerySet] = DataFlowQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("data flow")
        verbose_name_plural = _("data flows")
        ordering = ("name",)
        permissions = (("run_dataflow", _("Can run data flows and control their runs")),)
        indexes = (
            models.Index(fields=("enabled", "next_run_at"), name="dataflows_due_idx"),
            # Every heartbeat looks for overdue flows: only watched flows are read.
            models.Index(
                fields=("alert_after",),
                condition=Q(enabled=True, alert_after__isnull=False),
                name="dataflows_watched_idx",
            ),
        )
        constraints = (
            models.CheckConstraint(
                condition=Q(run_interval__gte=1), name="dataflows_run_interval_positive"
            ),
            models.CheckConstraint(
                condition=Q(cron="") | Q(run_interval__isnull=True),
                name="dataflows_one_schedule",
                violation_error_message=_("Set a cron expression or a run interval, not both."),
            ),
            models.CheckConstraint(
                condition=Q(wait_for__in=WaitFor.values), name="dataflows_wait_for_valid"
            ),
            models.CheckConstraint(
                condition=Q(catchup__in=Catchup.values), name="dataflows_catchup_valid"
            ),
            models.CheckConstraint(
                condition=Q(alert_after__gte=1), name="dataflows_alert_after_positive"
            ),
            models.CheckConstraint(
                condition=Q(disable_after_failures__gte=1),
                name="dataflows_disable_after_failures_positive",
            ),
        )

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, leaving the fields the scheduler owns to the scheduler.

        ``next_run_at``, ``last_run_at`` and ``last_run_status`` change under a loaded
        object whenever a heartbeat claims the flow; writing an old copy back would move a
        claimed slot back into the past. So a save of an existing row writes them only when
        ``update_fields`` names them, and ``next_run_at`` also when the interval or the
        enabled flag changed.
        """
        schedule_changed = self._schedule_changed()
        if schedule_changed:
            self.next_run_at = self.compute_next_run_at()
        update_fields = kwargs.get("update_fields")
        if not self._state.adding and update_fields is None:
            update_fields = {
                field.name
                for field in self._meta.concrete_fields
                if not field.primary_key and field.name not in SCHEDULER_FIELDS
            }
        if update_fields is not None:
            kwargs["update_fields"] = {*update_fields} | (
                {"next_run_at"} if schedule_changed else set()
            )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        """Delete the flow and its run history; ``FlowHasActiveRun`` while a run is active."""
        using = kwargs.get("using") or self._state.db or "default"
        with transaction.atomic(using=using):
            flows = DataFlow._base_manager.db_manager(using)
            row_lock(flows.filter(pk=self.pk)).values_list("pk").first()
            if (
                DataFlowRun._base_manager.db_manager(using)
                .filter(data_flow_id=self.pk, status__in=ACTIVE_STATUSES)
                .exists()
            ):
                raise FlowHasActiveRun([self.name])
            return super().delete(*args, **kwargs)

    def user_may(self, user: Any, permission: str) -> bool:
        """Whether ``user`` may do what ``permission`` (``"app_label.codename"``) allows
        to this flow, or to its runs.

        The model permission allows it for every flow. Without it, the flow's owner may
        see the flow and its runs, and, with ``DATAFLOWS["OWNERS_MANAGE_OWN_FLOWS"]``,
        edit, enable, disable and start it and control its runs. Adding and deleting
        flows always take the model permission.
        """
        if not _is_active_user(user):
            return False
        if user.has_perm(permission):
            return True
        if self.owner_id is None or self.owner_id != user.pk:
            return False
        if permission in OWNER_VIEW_PERMISSIONS:
            return True
        return app_settings.OWNERS_MANAGE_OWN_FLOWS and permission in OWNER_MANAGE_PERMISSIONS

    def set_enabled(self, enabled: bool) -> bool:
        """Turn the schedule on or off; ``True`` if that changed it.

        The one way to do it (admin, API, alerts): the save recomputes ``next_run_at``, so
        a flow enabled after a long pause does not run (or count as overdue) for the time
        it was off.
        """
        if self.enabled == enabled:
            return False
        self.enabled = enabled
        self.save(update_fields=["enabled", "updated_at"])
        return True

    def clean_fields(self, exclude: Any = None) -> None:
        excluded = set(exclude or ())
        errors: dict[str, Any] = {}
        # IntegerField.to_python() truncates 1.5 to 1; an interval must be a whole number.
        interval: Any = self.run_interval
        if "run_interval" not in excluded and (
            isinstance(interval, bool)
            or (isinstance(interval, float) and not interval.is_integer())
        ):
            errors["run_interval"] = _("Enter a whole number of seconds.")
        # A blank JSONField skips its validators for None; the column is NOT NULL though.
        if "configuration" not in excluded and self.configuration is None:
            errors["configuration"] = validate_json_object.message
        elif "configuration" not in excluded and isinstance(self.configuration, dict):
            try:  # the field's validator checks the rule; its size limit is a setting
                validate_configuration_object(self.configuration)
            except ValidationError as exc:
                errors["configuration"] = exc.messages
        if errors:
            raise ValidationError(errors)
        if isinstance(self.cron, str):
            self.cron = self.cron.strip()
        if isinstance(self.timezone, str):
            self.timezone = self.timezone.strip()
        super().clean_fields(exclude=exclude)

    def clean(self) -> None:
        """Check the schedule (at most one of cron and interval), the upstream flows (no
        cycle) and the configuration.

        A schedule error goes on both fields, so whichever of the two a form shows carries
        it; the configuration is checked against the flow's ``configuration_schema``.
        """
        super().clean()
        errors: dict[str, Any] = {}
        # Neither is fine: the flow then runs only after its upstream flows or when started.
        if self.cron and self.run_interval is not None:
            message = _("Set a cron expression or a run interval, not both.")
            errors["cron"] = ValidationError(message, code="schedule")
            errors["run_interval"] = ValidationError(message, code="schedule")
        if self.pk is not None:
            cycle = dependency_cycle(self, self.upstream_flows.all())
            if cycle:
                errors["upstream_flows"] = cycle_error(cycle)
        if (
            self.flow
            and isinstance(self.configuration, dict)
            and storable_json_problem(self.configuration) is None  # else a field error
        ):
            try:
                flow_class = self.flow_class
            except FlowNotRegistered:
                flow_class = None  # reported on the flow field
            if flow_class is not None:
                messages = configuration_errors(flow_class, self.configuration)
                if messages:
                    errors["configuration"] = messages
        if errors:
            raise ValidationError(errors)

    #: The fields that define when a flow runs: changing one recomputes ``next_run_at``.
    SCHEDULE_FIELDS = ("run_interval", "cron", "timezone", "enabled")

    def _schedule_changed(self) -> bool:
        """Is this a new flow, or does the save change its schedule or ``enabled``?"""
        if self._state.adding or self.pk is None:
            return True
        stored = DataFlow.objects.filter(pk=self.pk).values_list(*self.SCHEDULE_FIELDS).first()
        return stored != tuple(getattr(self, name) for name in self.SCHEDULE_FIELDS)

    @property
    def has_schedule(self) -> bool:
        """Does the flow have a schedule (cron or interval)? Without one it runs only after
        its upstream flows or when started."""
        return bool(self.cron) or self.run_interval is not None

    def compute_next_run_at(self, now: datetime | None = None) -> datetime | None:
        """When the flow is next due; ``None`` for a flow without a schedule (never due).

        An interval flow: ``run_interval`` after its last run, or now if never run. A cron
        flow: its first slot after now (a cron schedule is a wall-clock promise: enabling
        or editing it never starts a catch-up run). A cron stored invalid (bypassing
        validation) is due now, so the heartbeat reports it rather than forgetting it.
        ``now`` defaults to the database's clock, which the heartbeat judges due-ness by.
        """
        now = now or database_now()
        if self.cron:
            try:
                return next_cron_slot(self.cron, self.timezone, now)
            except InvalidSchedule:
                return now
        if self.run_interval is None:
            return None
        if self.last_run_at is None:
            return now
        return max(self.last_run_at + timedelta(seconds=self.run_interval), now)

    @property
    def schedule_error(self) -> str | None:
        """Why the stored schedule cannot be evaluated, or ``None`` (for the admin)."""
        if not self.cron:
            return None
        try:
            next_cron_slot(self.cron, self.timezone, timezone.now())
        except InvalidSchedule as exc:
            return str(exc)
        return None

    @property
    def alert_recipients(self) -> list[str]:
        """Who is told about failures: the flow's ``alert_emails``, else the default list."""
        return split_alert_emails(self.alert_emails) or list(app_settings.ALERT_EMAILS)

    def compute_overdue_since(self) -> datetime | None:
        """When the flow is (or will be) overdue; ``None`` without ``alert_after``."""
        if "overdue_since" in self.__dict__:  # annotated by with_overdue_since()
            value: datetime | None = self.__dict__["overdue_since"]
            return value
        if self.alert_after is None or self.pk is None:
            return None
        last_success = (
            self.runs.filter(status=RunStatus.SUCCESS)
            .order_by("-created_at")
            .values_list("ended_at", flat=True)
            .first()
        )
        base = last_success or self.created_at
        return base + timedelta(seconds=self.alert_after)

    @property
    def is_overdue(self) -> bool:
        """Has this enabled flow gone ``alert_after`` seconds without a successful run?

        Uses the ``overdue_since`` annotation of ``with_overdue_since()`` / ``overdue()``
        when present (no query per flow in a list), else one query.
        """
        if not self.enabled or self.alert_after is None:
            return False
        since = self.compute_overdue_since()
        return since is not None and since <= timezone.now()

    @property
    def flow_class(self) -> type[Flow]:
        """The registered flow class; raises ``FlowNotRegistered`` for anything else."""
        return get_flow_class(self.flow)

    @property
    def effective_queue(self) -> str:
        return self.queue or app_settings.DEFAULT_QUEUE

    @property
    def effective_timeout(self) -> int:
        return self.timeout or app_settings.RUN_TIMEOUT

    @property
    def effective_max_retries(self) -> int:
        return app_settings.MAX_RETRIES if self.max_retries is None else self.max_retries

    def upcoming_runs(self, count: int = 5, now: datetime | None = None) -> list[datetime]:
        """The next ``count`` scheduled times (empty when disabled or invalid).

        A cron flow's come from the expression alone, strictly after ``now``; an interval
        flow's start at ``next_run_at`` (or ``now``, if that has passed).
        """
        now = now or timezone.now()
        if not self.enabled:
            return []
        if self.cron:
            try:
                return upcoming_cron_slots(self.cron, self.timezone, now, count)
            except InvalidSchedule:
                return []
        if self.run_interval is None or self.next_run_at is None:
            return []
        first = max(self.next_run_at, now)
        return [first + timedelta(seconds=i * self.run_interval) for i in range(count)]

    def create_pending_run(
        self,
        trigger: str = RunTrigger.MANUAL,
        user: AbstractBaseUser | AnonymousUser | None = None,
        *,
        attempt: int = 1,
        now: datetime | None = None,
        input: dict[str, Any] | None = None,
    ) -> DataFlowRun:
        """Record a new pending run and move the schedule; raise ``RunAlreadyActive``.

        Nothing is handed to a backend: :meth:`trigger_run` is how a run starts. A run
        started by hand pushes an interval flow's next scheduled run to at least
        ``run_interval`` later, as a scheduled one would; it never moves a cron flow's next
        slot. ``input`` (a JSON object, else ``ValidationError``) is stored on the run as
        ``self.input`` of the flow. See
        :func:`django_dataflows.runs.bookkeeping.create_pending_run`.
        """
        return _starter().create_pending_run(
            self, trigger=trigger, user=user, attempt=attempt, now=now, input=input
        )

    def backfill(
        self,
        start: datetime,
        end: datetime,
        *,
        rerun: bool = False,
        user: AbstractBaseUser | AnonymousUser | None = None,
        force: bool = False,
    ) -> Backfill:
        """Run every slot of the flow's schedule in ``[start, end)``, oldest first, one at a
        time (the heartbeat drives it); return the new :class:`Backfill`.

        A slot that already succeeded is skipped unless ``rerun`` (a re-run is a new run of
        the slot; the old one stays). ``ValidationError`` for ``end <= start``, a flow
        without a schedule, more than ``MAX_BACKFILL_SLOTS`` slots without ``force``, or a
        range overlapping a running backfill of the flow; nothing is written then. See
        :func:`django_dataflows.backfills.create_backfill`.
        """
        return _starter().create_backfill(self, start, end, rerun=rerun, user=user, force=force)

    def trigger_run(
        self,
        trigger: str = RunTrigger.MANUAL,
        user: AbstractBaseUser | AnonymousUser | None = None,
        *,
        input: dict[str, Any] | None = None,
        attempt: int = 1,
    ) -> DataFlowRun:
        """Start a run: record it as pending and hand it to the backend after commit.

        This is the one way a run starts (see :func:`django_dataflows.runs.starting.trigger_run`).
        ``input`` is the run's own parameters (a JSON object, else ``ValidationError``; the
        flow reads it as ``self.input``). With the default in-process backend and no
        surrounding transaction the run has finished when this returns; the returned object
        is refreshed to show it. Raises
        ``RunAlreadyActive`` if a run is active, and ``EnqueueFailed`` if the backend
        refused the run. Inside a transaction (for example with ``ATOMIC_REQUESTS``) the
        run is handed over when it commits; a refusal then is logged and recorded on the
        run, as nobody is left to catch it.
        """
        return _starter().trigger_run(
            self, trigger=trigger, user=user, input=input, attempt=attempt
        )


class RunStarter(Protocol):
    """What starts runs: the run engine (:mod:`django_dataflows.runs.starting`).

    It sits above the models (it needs the backends) and imports them; the models import
    nothing above them. The app's ``ready()`` plugs the engine in with
    :func:`use_run_starter` (dependency inversion: the model states what it needs).
    """

    def create_pending_run(
        self,
        data_flow: DataFlow,
        trigger: str = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        *,
        attempt: int = ...,
        now: datetime | None = ...,
        input: dict[str, Any] | None = ...,
    ) -> DataFlowRun: ...

    def trigger_run(
        self,
        data_flow: DataFlow,
        trigger: str = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        *,
        input: dict[str, Any] | None = ...,
        attempt: int = ...,
    ) -> DataFlowRun: ...

    def create_backfill(
        self,
        data_flow: DataFlow,
        start: datetime,
        end: datetime,
        *,
        rerun: bool = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        force: bool = ...,
    ) -> Backfill: ...


_run_starter: RunStarter | None = None


def use_run_starter(starter: RunStarter) -> None:
    """Start runs of ``DataFlow.trigger_run()`` and ``create_pending_run()`` with ``starter``."""
    global _run_starter
    _run_starter = starter


def _starter() -> RunStarter:
    if _run_starter is None:
        raise ImproperlyConfigured(
            "Runs can be started once the app registry is ready, with 'django_dataflows' "
            "in INSTALLED_APPS."
        )
    return _run_starter


def new_task_id() -> str:
    """A fresh task id, given to a run when it is created.

    Knowing it before the run is handed over lets a backend such as Celery publish under
    it without a second write per run; it also names the run in logs and task monitors.
    """
    return uuid.uuid4().hex


def _save_stamped(
    instance: models.Model,
    save: Callable[..., None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """``save(*args, **kwargs)``; an update of an existing row stamps ``updated_at``.

    The stamp is the database's clock (``Now()``), read back after the write, as every
    queryset update of runs and steps does: live status follows ``updated_at``.
    """
    if instance._state.adding:
        save(*args, **kwargs)
        return
    instance.updated_at = Now()  # type: ignore[attr-defined]
    update_fields = kwargs.get("update_fields")
    if update_fields is not None:
        kwargs["update_fields"] = {*update_fields, "updated_at"}
    save(*args, **kwargs)
    instance.refresh_from_db(fields=["updated_at"])


def announce_runs_changed(run_ids: list[int], using: str) -> None:
    """Send :data:`~django_dataflows.signals.runs_changed` once the transaction commits.

    Only while a receiver listens (a live event source that publishes changes): with the
    default polling source, writes cost nothing extra.
    """
    if not run_ids or not runs_changed.has_listeners():
        return
    ids = sorted(set(run_ids))
    transaction.on_commit(
        partial(runs_changed.send_robust, sender=DataFlowRun, run_ids=ids), using=using
    )


def _listened() -> bool:
    return runs_changed.has_listeners()


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


class DataFlowRunQuerySet(models.QuerySet["DataFlowRun"]):
    def update(self, **kwargs: Any) -> int:
        """Update the rows, stamping ``updated_at`` from the database clock.

        Live status follows runs through ``updated_at``; a write that forgot it would be an
        event silently lost, so every queryset update of runs sets it.
        """
        kwargs.setdefault("updated_at", Now())
        # Which rows change is only read when a live source publishes changes.
        run_ids = list(self.values_list("pk", flat=True)) if _listened() else []
        count = super().update(**kwargs)
        if count:
            announce_runs_changed(run_ids, self.db)
        return count

    def active(self) -> DataFlowRunQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def visible_to(self, user: Any) -> DataFlowRunQuerySet:
        """The runs among these that ``user`` may see: all of them with
        ``dataflows.view_dataflowrun``, else those of the flows ``user`` owns."""
        if may_see_every_run(user):
            return self
        if not _is_active_user(user):
            return self.none()
        return self.filter(data_flow__owner_id=user.pk)

    def not_deleted(self) -> DataFlowRunQuerySet:
        """Runs that have not been soft-deleted (what lists and statistics show)."""
        return self.filter(deleted_at__isnull=True)

    def deleted(self) -> DataFlowRunQuerySet:
        """Soft-deleted runs: kept for audit until the next ``dataflows_prune``."""
        return self.filter(deleted_at__isnull=False)

    def stats(self, since: datetime | None = None) -> RunStats:
        """Counts per status, success rate and durations of these runs, in the database.

        Soft-deleted runs are left out; ``since`` keeps runs created at or after it. The
        success rate is ``success / (success + failed + timed_out)`` in percent (``None``
        with none of those): active runs are not rated, cancelled ones are counted but not
        rated. Durations (average, minimum, maximum and the interpolated 50th and 95th
        percentiles) are over the same rated runs.

        All runs, or the runs of some flows (``flow.runs``, ``filter(data_flow=...)``,
        ``filter(data_flow__in=...)``), are answered from the rollups: whole hours from
        :class:`RunRollup`, the hour ``since`` falls in and the active runs (at most one per
        flow) from the runs, in at most three queries whatever the size of the history.
        Percentiles are exact below ``EXACT_PERCENTILES_BELOW`` rated runs (their durations
        are read) and within 1 % above (:mod:`django_dataflows.histograms`); runs deleted
        by ``dataflows_prune`` still count. Any other selection is computed from its runs.
        """
        answerable, flows = _rollup_scope(self)
        if answerable:
            return _rollup_stats(self.db, flows, since, per_flow=False).get(0) or _run_stats(
                _NO_RUNS, dict.fromkeys(PERCENTILES)
            )
        return self.stats_from_runs(since)

    def stats_per_flow(
        self,
        since: datetime | None = None,
        *,
        percentiles: bool = True,
        durations_read: int | None = None,
    ) -> dict[int, RunStats]:
        """:meth:`stats` for each flow of these runs, keyed by flow id.

        From the rollups, like :meth:`stats`, in at most four queries; flows without runs
        are absent. Answered from the rollups, ``percentiles=False`` leaves the percentiles
        ``None`` (one query less), and ``durations_read`` bounds the durations read for
        exact percentiles (``EXACT_DURATIONS_READ`` by default; 0 takes every flow's from
        its histogram, within 1 %).
        """
        answerable, flows = _rollup_scope(self)
        if answerable:
            return _rollup_stats(
                self.db,
                flows,
                since,
                per_flow=True,
                percentiles=percentiles,
                durations_read=durations_read,
            )
        return self.stats_per_flow_from_runs(since)

    def counts_per_hour(self, start: datetime, end: datetime) -> dict[datetime, dict[str, int]]:
        """How many of these runs were created in each hour from ``start`` to ``end``, by status.

        Hours (UTC) from the rollups plus the active runs when the rollups can answer for
        this selection (as for :meth:`stats`); computed from the runs otherwise. ``start``
        and ``end`` are whole hours; soft-deleted runs are left out.
        """
        counts: dict[datetime, dict[str, int]] = defaultdict(dict)
        answerable, flows = _rollup_scope(self)
        if not answerable:
            rows = (
                self.not_deleted()
                .filter(created_at__gte=start, created_at__lt=end)
                .annotate(hour=TruncHour("created_at", tzinfo=UTC))
                .values_list("hour", "status")
                .annotate(count=Count("pk"))
                .order_by()
            )
            for hour, status, count in rows:
                counts[hour][status] = count
            return dict(counts)
        rollups = RunRollup.objects.using(self.db).filter(hour__gte=start, hour__lt=end)
        active = self.not_deleted().active().filter(created_at__gte=start, created_at__lt=end)
        if flows is not None:
            rollups = rollups.filter(data_flow_id__in=flows)
        elif (changed := _changed_rollups(self.db)) is not None:
            # All flows: an hour folded since it last changed is one row of its level.
            hours = sorted({hour for _flow, hour in changed if start <= hour < end})
            rollups = rollups.filter(hour__in=hours)
            folded = (
                RunRollupLevel.objects.using(self.db)
                .filter(span=rollup_levels.HOUR, flow_id=rollup_levels.ALL_FLOWS)
                .filter(start__gte=start, start__lt=end)
                .exclude(start__in=hours)
                .values_list("start", *rollup_sql.COUNT_COLUMNS)
            )
            for hour, *values in folded:
                for status, value in zip(rollup_sql.COUNT_COLUMNS, values, strict=True):
                    if value:
                        counts[hour][status] = value
        sums = [Sum(status) for status in rollup_sql.COUNT_COLUMNS]
        for hour, *values in rollups.values_list("hour").annotate(*sums).order_by():
            for status, value in zip(rollup_sql.COUNT_COLUMNS, values, strict=True):
                if value:
                    counts[hour][status] = value
        for hour, status, count in (
            active.annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("hour", "status")
            .annotate(count=Count("pk"))
            .order_by()
        ):
            counts[hour][status] = count
        return dict(counts)

    def stats_from_runs(self, since: datetime | None = None) -> RunStats:
        """:meth:`stats` computed from the runs themselves (any selection; reads them all).

        At most three queries: the counts and averages, then the percentiles: on
        PostgreSQL one ``percentile_cont`` for up to ``SORTED_PERCENTILES_LIMIT`` rated
        runs; beyond that (and on other databases) one ordered ``OFFSET`` query per
        percentile. Exact percentiles; the rebuild and the tests compare rollups with it.
        """
        runs = self._stats_base(since)
        rows = self._stats_rows(runs, percentiles=False, per_flow=False)
        row = rows[0] if rows else _NO_RUNS
        count = row["timed_count"]
        percentiles: dict[str, float | None] = dict.fromkeys(PERCENTILES)
        if not count:
            return _run_stats(row, percentiles)
        rated = runs.filter(status__in=RATED_STATUSES, duration_ms__isnull=False)
        if connections[runs.db].vendor == "postgresql" and count <= SORTED_PERCENTILES_LIMIT:
            return _run_stats(row, _sorted_percentiles(rated))
        durations = rated.order_by("duration_ms").values_list("duration_ms", flat=True)
        for key, fraction in PERCENTILES.items():
            lower, upper, weight = _percentile_positions(count, fraction)
            values: list[int] = [
                value for value in durations[lower : upper + 1] if value is not None
            ]
            percentiles[key] = _interpolate(values[0], values[-1], weight)
        return _run_stats(row, percentiles)

    def stats_per_flow_from_runs(self, since: datetime | None = None) -> dict[int, RunStats]:
        """:meth:`stats_per_flow` computed from the runs, in two queries at most.

        One grouped query on PostgreSQL; elsewhere a grouped aggregate and one window
        query that reads only the rows each percentile needs. Flows without runs are absent.
        """
        runs = self._stats_base(since)
        postgres = connections[runs.db].vendor == "postgresql"
        rows = self._stats_rows(runs, percentiles=postgres, per_flow=True)
        by_flow = {row["data_flow_id"]: row for row in rows}
        if postgres:
            return {
                flow_id: _run_stats(row, _postgres_percentiles(row))
                for flow_id, row in by_flow.items()
            }
        ranks = self._percentile_ranks(
            runs, {pk: row["timed_count"] for pk, row in by_flow.items()}
        )
        stats = {}
        for flow_id, row in by_flow.items():
            percentiles: dict[str, float | None] = dict.fromkeys(PERCENTILES)
            count = row["timed_count"]
            for key, fraction in PERCENTILES.items():
                if count:
                    lower, upper, weight = _percentile_positions(count, fraction)
                    found = ranks[flow_id]
                    percentiles[key] = _interpolate(found[lower], found[upper], weight)
            stats[flow_id] = _run_stats(row, percentiles)
        return stats

    def _stats_base(self, since: datetime | None) -> DataFlowRunQuerySet:
        runs = self.not_deleted().order_by()
        return runs if since is None else runs.filter(created_at__gte=since)

    @staticmethod
    def _stats_rows(
        runs: DataFlowRunQuerySet, *, percentiles: bool, per_flow: bool
    ) -> list[dict[str, Any]]:
        """The aggregate rows of ``runs`` (one, or one per flow), as dicts."""
        try:
            inner_sql, inner_params = runs.values(
                "data_flow_id", "status", "duration_ms", "cpu_time_ms", "db_queries"
            ).query.sql_with_params()
        except EmptyResultSet:  # e.g. filter(data_flow__in=[]): nothing to count
            return []
        sql, params = _stats_sql(inner_sql, percentiles=percentiles, per_flow=per_flow)
        names = (
            *(["data_flow_id"] if per_flow else []),
            *_STATS_COLUMNS,
            *(["percentiles"] if percentiles else []),
        )
        with connections[runs.db].cursor() as cursor:
            cursor.execute(sql, [*params, *inner_params])
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @staticmethod
    def _percentile_ranks(
        runs: DataFlowRunQuerySet, counts: dict[int, int]
    ) -> dict[int, dict[int, int]]:
        """The durations at the ranks the percentiles read, per flow, in one query."""
        wanted = {
            flow_id: sorted(
                {
                    rank
                    for fraction in PERCENTILES.values()
                    for rank in _percentile_positions(count, fraction)[:2]
                }
            )
            for flow_id, count in counts.items()
            if count
        }
        ranks: dict[int, dict[int, int]] = {flow_id: {} for flow_id in wanted}
        if not wanted:
            return ranks
        ranked = (
            runs.filter(
                status__in=RATED_STATUSES, duration_ms__isnull=False, data_flow_id__in=wanted
            )
            .annotate(
                flow_ref=F("data_flow_id"),
                duration_ref=F("duration_ms"),
                rank_ref=Window(
                    RowNumber(), partition_by=[F("data_flow_id")], order_by=F("duration_ms").asc()
                ),
            )
            .values_list("flow_ref", "duration_ref", "rank_ref")
        )
        inner_sql, inner_params = ranked.query.sql_with_params()
        conditions = []
        params: list[Any] = list(inner_params)
        for flow_id, wanted_ranks in wanted.items():
            placeholders = ", ".join(["%s"] * len(wanted_ranks))
            conditions.append(f"(ranked.flow_ref = %s AND ranked.rank_ref IN ({placeholders}))")
            # ROW_NUMBER() counts from 1; percentile positions count from 0.
            params += [flow_id, *(rank + 1 for rank in wanted_ranks)]
        sql = (
            "SELECT ranked.flow_ref, ranked.duration_ref, ranked.rank_ref "  # noqa: S608
            f"FROM ({inner_sql}) ranked WHERE {' OR '.join(conditions)}"
        )
        with connections[runs.db].cursor() as cursor:
            cursor.execute(sql, params)
            for flow_id, duration, rank_number in cursor.fetchall():
                ranks[flow_id][rank_number - 1] = duration
        return ranks

    def stuck(self, now: datetime | None = None) -> DataFlowRunQuerySet:
        """Runs in progress past their timeout (the flow's ``timeout``, else ``RUN_TIMEOUT``).

        A run ``in_progress`` that long has lost its worker. The timeout counts from the
        run's latest move into ``in_progress`` (``activated_at``). A run still ``pending``
        is not stuck but unclaimed (:meth:`unclaimed`). Computed in the database: only the
        stuck rows are read, each annotated with its ``effective_timeout`` in seconds.
        """
        now = now or timezone.now()
        timeout = Coalesce(
            F("data_flow__timeout"),
            Value(app_settings.RUN_TIMEOUT),
            output_field=models.IntegerField(),
        )
        timeout_span = ExpressionWrapper(
            timeout * Value(timedelta(seconds=1)), output_field=models.DurationField()
        )
        deadline = ExpressionWrapper(Value(now) - timeout_span, output_field=models.DateTimeField())
        # From the latest move into in progress (a resumed run starts anew); rows from
        # before activated_at existed fall back to their start.
        since = Coalesce("activated_at", "started_at")
        return (
            self.annotate(effective_timeout=timeout, active_since=since)
            # A paused run never times out: nothing runs it until it is resumed.
            .filter(status=RunStatus.IN_PROGRESS, active_since__lte=deadline)
            .order_by()
        )

    def unclaimed(self, now: datetime | None = None) -> DataFlowRunQuerySet:
        """Pending runs that no worker has started within ``PICKUP_TIMEOUT`` seconds.

        Counted from the run's latest move into ``pending`` (``activated_at``: its creation,
        its latest redelivery, or the latest sign of life of the in-process batch it waits
        in). Their message was probably lost with the broker, or the process that was to
        run them died.
        """
        now = now or timezone.now()
        deadline = now - timedelta(seconds=app_settings.PICKUP_TIMEOUT)
        return self.filter(
            Q(status=RunStatus.PENDING)
            & (
                Q(activated_at__lte=deadline)
                | Q(activated_at__isnull=True, created_at__lte=deadline)
            )
        ).order_by()


class DataFlowRun(models.Model):
    """One execution of a data flow; the history is kept."""

    #: Not a column: the flow's ``(consecutive_failures, overdue_episode_since)`` as the
    #: worker's outcome statement read them (PostgreSQL), so the alerts need not read them
    #: again; ``None`` when nothing read them with the outcome.
    flow_alert_state: tuple[int, datetime | None] | None = None

    data_flow = models.ForeignKey(
        DataFlow,
        on_delete=models.CASCADE,
        related_name="runs",
        verbose_name=_("data flow"),
        # (data_flow, created_at) serves every lookup by flow; a second index would only
        # cost writes.
        db_index=False,
    )
    status = models.CharField(
        _("status"), max_length=20, choices=RunStatus.choices, default=RunStatus.PENDING
    )
    trigger = models.CharField(
        _("trigger"), max_length=20, choices=RunTrigger.choices, default=RunTrigger.MANUAL
    )
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("triggered by"),
    )
    scheduled_for = models.DateTimeField(
        _("scheduled for"),
        null=True,
        blank=True,
        help_text=_("The schedule slot a heartbeat run belongs to."),
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    error_backtrace = models.TextField(_("error backtrace"), blank=True)
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    attempt = models.PositiveSmallIntegerField(_("attempt"), default=1)
    task_id = models.CharField(
        _("task id"),
        max_length=255,
        blank=True,
        default=new_task_id,
        help_text=_("Assigned when the run is created; the id of its task on an async backend."),
    )
    queue = models.CharField(_("queue"), max_length=100, blank=True)
    input = models.JSONField(
        _("input"),
        default=dict,
        blank=True,
        encoder=DjangoJSONEncoder,
        validators=[validate_json_object],
        help_text=_("The run's own parameters (self.input); empty for scheduled runs."),
    )
    progress = models.JSONField(
        _("progress"),
        default=dict,
        blank=True,
        encoder=DjangoJSONEncoder,
        help_text=_("The latest self.progress(): done, total and message."),
    )
    duration_ms = models.GeneratedField(
        expression=MillisecondsBetween("started_at", "ended_at"),
        output_field=models.BigIntegerField(_("duration (ms)"), null=True, blank=True),
        db_persist=True,
        verbose_name=_("duration (ms)"),
    )
    activated_at = models.DateTimeField(
        _("activated at"),
        null=True,
        blank=True,
        db_default=Now(),
        editable=False,
        help_text=_("When the run last moved into pending or in progress; timeouts count from it."),
    )
    redeliveries = models.PositiveSmallIntegerField(
        _("redeliveries"),
        default=0,
        editable=False,
        help_text=_("How often a run no worker picked up was handed to the backend again."),
    )
    cancel_requested_at = models.DateTimeField(_("cancel requested at"), null=True, blank=True)
    pause_requested_at = models.DateTimeField(_("pause requested at"), null=True, blank=True)
    deleted_at = models.DateTimeField(_("deleted at"), null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(
        _("updated at"),
        db_default=Now(),
        editable=False,
        help_text=_("Set from the database clock by every write to the run or its steps."),
    )
    cpu_time_ms = models.PositiveBigIntegerField(
        _("CPU time (ms)"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("CPU time of the thread that ran the flow's body."),
    )
    db_queries = models.PositiveIntegerField(
        _("database queries"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("Queries the flow's body made."),
    )
    late_since = models.DateTimeField(
        _("late since"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("When the run was found running past its flow's max duration (alerted once)."),
    )
    generation = models.PositiveBigIntegerField(
        _("generation"),
        null=True,
        blank=True,
        editable=False,
        help_text=_("For a run its upstream flows started: which of the flow's generations."),
    )
    backfill = models.ForeignKey(
        "Backfill",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="runs",
        verbose_name=_("backfill"),
        help_text=_("The backfill that ran this past slot."),
    )
    upstream_runs = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="downstream_runs",
        verbose_name=_("upstream runs"),
        help_text=_("The upstream runs whose success started this run."),
    )

    objects: ClassVar[DataFlowRunQuerySet] = DataFlowRunQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("data flow run")
        verbose_name_plural = _("data flow runs")
        ordering = ("-created_at", "-pk")
        get_latest_by = "created_at"
        indexes = (
            # Only what a page or the run engine reads: statistics read the rollups, so
            # no index is kept for them (each one costs every insert and finish).
            models.Index(fields=("data_flow", "created_at"), name="dataflows_run_flow_created_idx"),
            models.Index(fields=("status", "created_at"), name="dataflows_run_status_idx"),
            # With the key and deleted_at: a list page far down skips rows on the index alone.
            models.Index(
                fields=("created_at", "id"),
                include=("deleted_at",),
                name="dataflows_run_newest_idx",
            ),
            models.Index(fields=("updated_at",), name="dataflows_run_updated_idx"),
            # Small partial indexes: soft-deleted runs (prune, the admin's filter) and
            # recent failures (the admin's health box); most runs are in neither.
            models.Index(
                fields=("deleted_at",),
                condition=Q(deleted_at__isnull=False),
                name="dataflows_run_deleted_idx",
            ),
            models.Index(
                fields=("ended_at",),
                condition=Q(status__in=(RunStatus.FAILED, RunStatus.TIMED_OUT)),
                name="dataflows_run_failed_idx",
            ),
            # Has an upstream flow succeeded since a downstream flow last took it in? One
            # seek per dependency, whatever the history's size.
            models.Index(
                fields=("data_flow", "id"),
                condition=Q(status=RunStatus.SUCCESS),
                name="dataflows_run_success_idx",
            ),
        )
        constraints = (
            # A slot runs once from the schedule, and once per backfill (a backfill with
            # rerun runs a slot again and keeps the old run).
            models.UniqueConstraint(
                fields=("data_flow", "scheduled_for"),
                condition=Q(backfill__isnull=True),
                name="dataflows_one_run_per_slot",
            ),
            models.UniqueConstraint(
                fields=("backfill", "scheduled_for"),
                condition=Q(backfill__isnull=False),
                name="dataflows_one_run_per_backfill_slot",
            ),
            # Exactly once per generation, however many heartbeats and workers race.
            models.UniqueConstraint(
                fields=("data_flow", "generation"),
                condition=Q(generation__isnull=False),
                name="dataflows_one_run_per_generation",
            ),
            models.UniqueConstraint(
                fields=("data_flow",),
                condition=Q(status__in=ACTIVE_STATUSES),
                name="dataflows_one_active_run_per_flow",
            ),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="dataflows_run_status_valid"
            ),
        )

    def __str__(self) -> str:
        return f"{self.data_flow} #{self.pk} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an update of an existing row also stamps ``updated_at`` (database clock)."""
        _save_stamped(self, super().save, args, kwargs)
        announce_runs_changed([self.pk], self._state.db or "default")

    @property
    def duration(self) -> timedelta | None:
        """How long the run took; ``None`` until it has started and ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def previous_slot(self) -> datetime | None:
        """The schedule slot before this run's ``scheduled_for`` (``None`` without a slot):
        the run's data interval is ``[previous_slot, scheduled_for)``."""
        if self.scheduled_for is None:
            return None
        return previous_slot_for(self.data_flow, self.scheduled_for)

    @property
    def upstream_results(self) -> dict[str, Any]:
        """``{flow name: result}`` of the upstream runs whose success started this run."""
        if self._state.adding:
            return {}
        upstream = self.upstream_runs.select_related("data_flow").order_by("pk")
        return {run.data_flow.name: run.result for run in upstream}

    def soft_delete(self) -> None:
        """Hide the run from lists and statistics; it stays for audit until ``dataflows_prune``.

        Raises ``InvalidRunState`` for an active run. The check and the write are one
        conditional update, so a run that becomes active meanwhile is never hidden.
        Deleting a run that is already deleted does nothing.
        """
        hidden = (
            DataFlowRun.objects.filter(pk=self.pk, deleted_at__isnull=True)
            .exclude(status__in=ACTIVE_STATUSES)
            .update(deleted_at=Now())
        )
        self.refresh_from_db(fields=["status", "deleted_at", "updated_at"])
        if not hidden and self.deleted_at is None:
            raise InvalidRunState(
                self.pk,
                self.status,
                "delete",
                f"it is {self.status}; only finished runs can be deleted.",
            )


class StepStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    IN_PROGRESS = "in_progress", _("In progress")
    SUCCESS = "success", _("Success")
    FAILED = "failed", _("Failed")
    SKIPPED = "skipped", _("Skipped")
    CANCELLED = "cancelled", _("Cancelled")


class DataFlowRunStepQuerySet(models.QuerySet["DataFlowRunStep"]):
    def update(self, **kwargs: Any) -> int:
        """Update the rows, stamping ``updated_at`` from the database clock (live status)."""
        kwargs.setdefault("updated_at", Now())
        run_ids = list(self.values_list("run_id", flat=True)) if _listened() else []
        count = super().update(**kwargs)
        if count:
            announce_runs_changed(run_ids, self.db)
        return count

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> list[DataFlowRunStep]:
        """Insert the steps; live sources that publish are told about their runs."""
        steps = super().bulk_create(objs, *args, **kwargs)
        announce_runs_changed([step.run_id for step in steps], self.db)
        return steps


class DataFlowRunStep(models.Model):
    """One step of a run: a method named in ``Flow.steps`` or a ``with self.step()`` block."""

    run = models.ForeignKey(
        DataFlowRun, on_delete=models.CASCADE, related_name="steps", verbose_name=_("run")
    )
    position = models.PositiveSmallIntegerField(_("position"))
    name = models.CharField(_("name"), max_length=200)
    status = models.CharField(
        _("status"), max_length=20, choices=StepStatus.choices, default=StepStatus.PENDING
    )
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    duration_ms = models.GeneratedField(
        expression=MillisecondsBetween("started_at", "ended_at"),
        output_field=models.BigIntegerField(_("duration (ms)"), null=True, blank=True),
        db_persist=True,
        verbose_name=_("duration (ms)"),
    )
    result = models.JSONField(_("result"), null=True, blank=True, encoder=DjangoJSONEncoder)
    error_message = models.TextField(_("error message"), blank=True)
    updated_at = models.DateTimeField(_("updated at"), db_default=Now(), editable=False)

    objects: ClassVar[DataFlowRunStepQuerySet] = DataFlowRunStepQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("run step")
        verbose_name_plural = _("run steps")
        ordering = ("run", "position")
        constraints = (
            models.UniqueConstraint(fields=("run", "position"), name="dataflows_step_position"),
            models.CheckConstraint(
                condition=Q(status__in=StepStatus.values), name="dataflows_step_status_valid"
            ),
        )

    def __str__(self) -> str:
        return f"{self.run_id} step {self.position}: {self.name} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; an update of an existing row also stamps ``updated_at`` (database clock)."""
        _save_stamped(self, super().save, args, kwargs)
        announce_runs_changed([self.run_id], self._state.db or "default")


class Heartbeat(models.Model):
    """The last heartbeat received (a single row), for the admin and health checks."""

    SINGLETON_PK = 1

    received_at = models.DateTimeField(_("received at"))
    source = models.CharField(_("source"), max_length=20)
    client = models.CharField(_("client"), max_length=64, blank=True)
    result = models.JSONField(_("result"), default=dict, encoder=DjangoJSONEncoder)

    class Meta:
        verbose_name = _("heartbeat")
        verbose_name_plural = _("heartbeats")

    def __str__(self) -> str:
        return f"Heartbeat at {self.received_at:%Y-%m-%d %H:%M:%S} ({self.source})"

    @classmethod
    def record(
        cls, *, received_at: datetime, source: str, client: str, result: dict[str, Any]
    ) -> None:
        """Keep this heartbeat as the last one (safe when many servers call at once)."""
        fields = {"received_at": received_at, "source": source, "client": client, "result": result}
        if cls.objects.filter(pk=cls.SINGLETON_PK).update(**fields):
            return
        try:
            with transaction.atomic():
                cls.objects.create(pk=cls.SINGLETON_PK, **fields)
        except IntegrityError:  # another server created it first
            cls.objects.filter(pk=cls.SINGLETON_PK).update(**fields)

    @classmethod
    def last(cls) -> Heartbeat | None:
        """The last heartbeat received, or ``None`` if there has never been one."""
        return cls.objects.filter(pk=cls.SINGLETON_PK).first()


class RunRollup(models.Model):
    """The finished runs of one flow created within one hour: counts and durations.

    Written by database triggers in the statement that finishes, soft-deletes or changes a
    run (no extra commit); statistics add these rows up instead of reading the runs. A row
    outlives its runs: deleting a run (``dataflows_prune``) keeps its contribution, a soft
    delete takes it out. ``dataflows_rollups --rebuild`` recomputes them from the runs.
    """

    data_flow = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
    )
    hour = models.DateTimeField(_("hour"), help_text=_("The hour the runs were created in."))
    success = models.IntegerField(_("success"), default=0)
    failed = models.IntegerField(_("failed"), default=0)
    cancelled = models.IntegerField(_("cancelled"), default=0)
    timed_out = models.IntegerField(_("timed out"), default=0)
    rated = models.IntegerField(
        _("rated with a duration"),
        default=0,
        help_text=_("Successful, failed and timed-out runs with a duration."),
    )
    duration_sum = models.BigIntegerField(_("duration sum (ms)"), default=0)
    duration_min = models.BigIntegerField(_("shortest (ms)"), null=True, blank=True)
    duration_max = models.BigIntegerField(_("longest (ms)"), null=True, blank=True)
    # The run's cost over the same rated runs: how many have a value, and their sum.
    cpu_time_count = models.IntegerField(_("runs with a CPU time"), default=0)
    cpu_time_sum = models.BigIntegerField(_("CPU time sum (ms)"), default=0)
    db_queries_count = models.IntegerField(_("runs with a query count"), default=0)
    db_queries_sum = models.BigIntegerField(_("database queries sum"), default=0)
    changed = models.BooleanField(
        _("changed"),
        db_default=True,
        help_text=_("Changed since it was last folded into the coarser rollup levels."),
    )

    class Meta:
        verbose_name = _("run rollup")
        verbose_name_plural = _("run rollups")
        constraints = (
            models.UniqueConstraint(fields=("data_flow", "hour"), name="dataflows_rollup_hour"),
        )
        indexes = (
            models.Index(fields=("hour",), name="dataflows_rollup_hour_idx"),
            # The rows still to fold (few): the coarser levels answer for every other hour.
            models.Index(
                fields=("hour",), condition=Q(changed=True), name="dataflows_rollup_changed_idx"
            ),
        )

    def __str__(self) -> str:
        return f"{self.data_flow_id} {self.hour:%Y-%m-%d %H:00}"


class RunDurationBucket(models.Model):
    """How many rated runs of one flow and hour fell in one log bucket of duration.

    See :mod:`django_dataflows.histograms`: the percentiles of any set of hours and flows
    come from adding these counts, within 1 %.
    """

    data_flow = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
    )
    hour = models.DateTimeField(_("hour"))
    bucket = models.IntegerField(_("bucket"))
    count = models.IntegerField(_("count"), default=0)

    class Meta:
        verbose_name = _("run duration bucket")
        verbose_name_plural = _("run duration buckets")
        constraints = (
            models.UniqueConstraint(
                fields=("data_flow", "hour", "bucket"), name="dataflows_rollup_bucket"
            ),
        )
        indexes = (models.Index(fields=("hour",), name="dataflows_bucket_hour_idx"),)

    def __str__(self) -> str:
        return f"{self.data_flow_id} {self.hour:%Y-%m-%d %H:00} bucket {self.bucket}"


class RunRollupLevel(models.Model):
    """Hourly rollups added up over a coarser span, folded from :class:`RunRollup`.

    Three levels (:mod:`django_dataflows.rollup_levels`): one flow's day (``flow_id`` the
    flow), and all flows' hour and day (``flow_id`` 0). Not a foreign key: the all-flows
    rows belong to no flow; a flow's own rows go with it when it is deleted.
    """

    span = models.PositiveSmallIntegerField(_("span (hours)"))
    flow_id = models.BigIntegerField(_("flow id"), help_text=_("0 for all flows."))
    start = models.DateTimeField(_("start"))
    success = models.BigIntegerField(_("success"), default=0)
    failed = models.BigIntegerField(_("failed"), default=0)
    cancelled = models.BigIntegerField(_("cancelled"), default=0)
    timed_out = models.BigIntegerField(_("timed out"), default=0)
    rated = models.BigIntegerField(_("rated with a duration"), default=0)
    duration_sum = models.BigIntegerField(_("duration sum (ms)"), default=0)
    duration_min = models.BigIntegerField(_("shortest (ms)"), null=True, blank=True)
    duration_max = models.BigIntegerField(_("longest (ms)"), null=True, blank=True)
    cpu_time_count = models.BigIntegerField(_("runs with a CPU time"), default=0)
    cpu_time_sum = models.BigIntegerField(_("CPU time sum (ms)"), default=0)
    db_queries_count = models.BigIntegerField(_("runs with a query count"), default=0)
    db_queries_sum = models.BigIntegerField(_("database queries sum"), default=0)

    class Meta:
        verbose_name = _("run rollup level")
        verbose_name_plural = _("run rollup levels")
        constraints = (
            models.UniqueConstraint(
                fields=("span", "flow_id", "start"), name="dataflows_rollup_level"
            ),
        )
        # Every flow's rows from a day on (the unique key serves some flows').
        indexes = (models.Index(fields=("span", "start"), name="dataflows_level_start_idx"),)

    def __str__(self) -> str:
        return f"{self.span} h from {self.start:%Y-%m-%d %H:00}, flow {self.flow_id or 'all'}"


class RunBucketLevel(models.Model):
    """:class:`RunDurationBucket` counts added up over a :class:`RunRollupLevel`'s span."""

    span = models.PositiveSmallIntegerField(_("span (hours)"))
    flow_id = models.BigIntegerField(_("flow id"))
    start = models.DateTimeField(_("start"))
    bucket = models.IntegerField(_("bucket"))
    count = models.BigIntegerField(_("count"), default=0)

    class Meta:
        verbose_name = _("run duration bucket level")
        verbose_name_plural = _("run duration bucket levels")
        constraints = (
            models.UniqueConstraint(
                fields=("span", "flow_id", "start", "bucket"), name="dataflows_bucket_level"
            ),
        )
        indexes = (models.Index(fields=("span", "start"), name="dataflows_lvbucket_start_idx"),)

    def __str__(self) -> str:
        return f"{self.span} h from {self.start:%Y-%m-%d %H:00} bucket {self.bucket}"


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
    with connection_.cursor() as cursor:
        cursor.execute(
            " UNION ALL ".join(sql for sql, _params in parts),
            [p for _sql, params in parts for p in params],
        )
        for flow_id, *values in cursor.fetchall():
            row = rows.setdefault(
                int(flow_id), {**dict.fromkeys(names, 0), "min": None, "max": None}
            )
            for name, value in zip(names, values, strict=True):
                if value is None:
                    continue
                if name == "min":
                    row[name] = value if row[name] is None else min(row[name], value)
                elif name == "max":
                    row[name] = value if row[name] is None else max(row[name], value)
                else:
                    row[name] += int(value)
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
        buckets: dict[int, list[tuple[int, int]]] = defaultdict(list)
        with connection_.cursor() as cursor:
            cursor.execute(sql, all_params)
            for key, bucket_index, count in cursor.fetchall():
                buckets[int(key)].append((bucket_index, int(count)))
        for key in keys:
            row = rows[key]
            result[key] = {
                name: histograms.histogram_percentile(
                    buckets[key], fraction, minimum=row["min"], maximum=row["max"]
                )
                for name, fraction in PERCENTILES.items()
            }
    return result


class DataFlowRunLog(models.Model):
    """One line of what a run logged or printed, in order (``position`` from 1)."""

    run = models.ForeignKey(
        DataFlowRun, on_delete=models.CASCADE, related_name="logs", verbose_name=_("run")
    )
    position = models.PositiveIntegerField(_("position"))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    level = models.CharField(_("level"), max_length=10)
    logger = models.CharField(_("logger"), max_length=200, blank=True)
    message = models.TextField(_("message"), blank=True)
    step = models.CharField(_("step"), max_length=200, blank=True)

    class Meta:
        verbose_name = _("run log line")
        verbose_name_plural = _("run log lines")
        ordering = ("run", "position")
        constraints = (
            models.UniqueConstraint(fields=("run", "position"), name="dataflows_one_log_position"),
        )

    def __str__(self) -> str:
        return f"{self.level} {self.logger}: {self.message[:80]}"


class AuditSource(models.TextChoices):
    ADMIN = "admin", _("Admin")
    API = "api", _("API")
    COMMAND = "command", _("Command")


class AuditAction(models.TextChoices):
    FLOW_CREATED = "flow_created", _("Flow created")
    FLOW_CHANGED = "flow_changed", _("Flow changed")
    FLOW_DELETED = "flow_deleted", _("Flow deleted")
    FLOW_ENABLED = "flow_enabled", _("Flow enabled")
    FLOW_DISABLED = "flow_disabled", _("Flow disabled")
    RUN_STARTED = "run_started", _("Run started")
    RUN_CANCELLED = "run_cancelled", _("Run cancelled")
    RUN_PAUSED = "run_paused", _("Run paused")
    RUN_RESUMED = "run_resumed", _("Run resumed")
    RUN_RETRIED = "run_retried", _("Run retried")
    RUN_DELETED = "run_deleted", _("Run deleted")


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def visible_to(self, user: Any) -> AuditEntryQuerySet:
        """Every entry with ``dataflows.view_auditentry``; else the entries of the flows
        ``user`` sees (an owner's own), so no entry names another owner's flow."""
        if _is_active_user(user) and user.has_perm("dataflows.view_auditentry"):
            return self
        if not _is_active_user(user):
            return self.none()
        return self.filter(data_flow__in=DataFlow.objects.visible_to(user).values("pk"))


class AuditEntry(models.Model):
    """Who changed what, from where: one row per change a person or a program made.

    Written in the transaction of the change it records (:mod:`django_dataflows.audit`),
    so a change that rolls back leaves no entry. The flow's name is kept, so the entry
    still says which flow it was after the flow is deleted.
    """

    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    source = models.CharField(_("source"), max_length=20, choices=AuditSource.choices)
    action = models.CharField(_("action"), max_length=30, choices=AuditAction.choices)
    data_flow = models.ForeignKey(
        DataFlow,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("data flow"),
    )
    flow_name = models.CharField(_("flow name"), max_length=200, blank=True)
    run = models.ForeignKey(
        DataFlowRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("run"),
    )
    details = models.JSONField(_("details"), default=dict, blank=True, encoder=DjangoJSONEncoder)
    remote_addr = models.GenericIPAddressField(_("remote address"), null=True, blank=True)

    objects: ClassVar[AuditEntryQuerySet] = AuditEntryQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("audit entry")
        verbose_name_plural = _("audit entries")
        ordering = ("-created_at", "-pk")
        indexes = (
            models.Index(fields=("data_flow", "created_at"), name="dataflows_audit_flow_idx"),
        )

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.flow_name or '-'}"


class UpstreamMark(models.Model):
    """How far a downstream flow has taken in an upstream flow's successful runs.

    ``run_id`` is the newest successful run of ``upstream`` that a run of ``downstream``
    was started for; a success with a larger id is new to ``downstream``. No row means
    none taken in yet. Written with the downstream run, in the same transaction.
    """

    downstream = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("downstream flow")
    )
    upstream = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="+", verbose_name=_("upstream flow")
    )
    run_id = models.BigIntegerField(_("newest run taken in"))

    class Meta:
        verbose_name = _("upstream mark")
        verbose_name_plural = _("upstream marks")
        constraints = (
            models.UniqueConstraint(
                fields=("downstream", "upstream"), name="dataflows_one_mark_per_dependency"
            ),
        )

    def __str__(self) -> str:
        return f"{self.upstream_id} → {self.downstream_id}: run {self.run_id}"


def dependency_cycle(data_flow: DataFlow, upstreams: Any) -> list[str] | None:
    """The flow names of the cycle that ``upstreams`` as ``data_flow``'s upstream flows would
    close (``["A", "B", "A"]``: A triggers B, B triggers A), or ``None``.

    ``upstreams`` are flows or keys; the flow's stored upstream flows are replaced by them.
    One query reads every dependency (the graph is small: one row per edge).
    """
    proposed = [getattr(upstream, "pk", upstream) for upstream in upstreams]
    own = data_flow.pk
    if own is None or not proposed:
        return None
    through = DataFlow.upstream_flows.through
    downstream_of: dict[int, list[int]] = {}
    for downstream_id, upstream_id in through.objects.exclude(from_dataflow_id=own).values_list(
        "from_dataflow_id", "to_dataflow_id"
    ):
        downstream_of.setdefault(upstream_id, []).append(downstream_id)
    # Walk downstream from the flow: reaching one of its new upstream flows closes a cycle.
    path_to: dict[int, list[int]] = {own: [own]}
    frontier = [own]
    wanted = set(proposed)
    while frontier:
        following = []
        for node in frontier:
            if node in wanted:
                ids = [*path_to[node], own]
                names = dict(DataFlow.objects.filter(pk__in=ids).values_list("pk", "name"))
                names[own] = data_flow.name
                return [names[pk] for pk in ids]
            for child in downstream_of.get(node, ()):
                if child not in path_to:
                    path_to[child] = [*path_to[node], child]
                    following.append(child)
        frontier = following
    return None


def cycle_error(cycle: list[str]) -> ValidationError:
    """The validation error for a dependency cycle, naming it: ``A → B → A``."""
    if len(cycle) == 2:
        return ValidationError(
            _("A flow cannot be its own upstream flow: %(cycle)s."),
            code="cycle",
            params={"cycle": " → ".join(cycle)},
        )
    return ValidationError(
        _("These upstream flows would make a cycle: %(cycle)s."),
        code="cycle",
        params={"cycle": " → ".join(cycle)},
    )


class BackfillStatus(models.TextChoices):
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    CANCELLED = "cancelled", _("Cancelled")


class Backfill(models.Model):
    """Past slots of a flow's schedule to run, oldest first, one at a time.

    ``done`` of ``total`` slots are handled (run, or skipped as already succeeded);
    ``next_slot`` is the next one to consider (``None`` once every slot is handed out).
    """

    data_flow = models.ForeignKey(
        DataFlow, on_delete=models.CASCADE, related_name="backfills", verbose_name=_("data flow")
    )
    start = models.DateTimeField(_("start"), help_text=_("The first slot at or after it runs."))
    end = models.DateTimeField(_("end"), help_text=_("Slots before it run (exclusive)."))
    rerun = models.BooleanField(
        _("rerun"), default=False, help_text=_("Run slots that already succeeded again too.")
    )
    status = models.CharField(
        _("status"),
        max_length=20,
        choices=BackfillStatus.choices,
        default=BackfillStatus.RUNNING,
    )
    done = models.PositiveIntegerField(_("done"), default=0)
    total = models.PositiveIntegerField(_("total"), default=0)
    next_slot = models.DateTimeField(_("next slot"), null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)

    class Meta:
        verbose_name = _("backfill")
        verbose_name_plural = _("backfills")
        ordering = ("-created_at", "-pk")
        indexes = (
            models.Index(
                fields=("data_flow",),
                condition=Q(status="running"),
                name="dataflows_backfill_running_idx",
            ),
        )
        constraints = (
            models.CheckConstraint(
                condition=Q(end__gt=F("start")), name="dataflows_backfill_range"
            ),
            models.CheckConstraint(
                condition=Q(status__in=BackfillStatus.values), name="dataflows_backfill_status"
            ),
        )

    def __str__(self) -> str:
        return f"{self.data_flow} {self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M}"

    @property
    def percent(self) -> int:
        """How far it is, 0 to 100."""
        return 100 if not self.total else round(100 * self.done / self.total)

    def cancel(self) -> bool:
        """Stop after the current run (it finishes); ``False`` if it was not running."""
        cancelled = Backfill.objects.filter(pk=self.pk, status=BackfillStatus.RUNNING).update(
            status=BackfillStatus.CANCELLED, ended_at=Now()
        )
        self.refresh_from_db(fields=["status", "ended_at"])
        return bool(cancelled)


def mark_pipeline_flows(flow_ids: Any) -> None:
    """Set ``in_pipeline`` on these flows from their dependencies (one statement)."""
    through = DataFlow.upstream_flows.through
    linked = through.objects.filter(
        Q(from_dataflow_id=OuterRef("pk")) | Q(to_dataflow_id=OuterRef("pk"))
    )
    DataFlow.objects.filter(pk__in=list(flow_ids)).update(in_pipeline=models.Exists(linked))


def _dependencies_changed(
    sender: Any, instance: Any, action: str, pk_set: Any, **kwargs: Any
) -> None:
    if action in ("post_add", "post_remove", "post_clear", "pre_clear"):
        if action == "pre_clear":  # the other ends are gone after the clear: note them now
            through = DataFlow.upstream_flows.through
            instance._dataflows_cleared = set(
                through.objects.filter(
                    Q(from_dataflow_id=instance.pk) | Q(to_dataflow_id=instance.pk)
                ).values_list("from_dataflow_id", "to_dataflow_id")
            )
            return
        ids = {instance.pk, *(pk_set or ())}
        for pair in getattr(instance, "_dataflows_cleared", ()):
            ids.update(pair)
        mark_pipeline_flows(ids)


models.signals.m2m_changed.connect(
    _dependencies_changed,
    sender=DataFlow.upstream_flows.through,
    dispatch_uid="dataflows.in_pipeline",
)
