"""``DataFlow`` (a schedulable flow) and ``DataFlowRun`` (one execution of it)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, cast

from django.apps import apps
from django.conf import settings
from django.core.exceptions import EmptyResultSet, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator, validate_email
from django.db import IntegrityError, connection, connections, models, transaction
from django.db.models import (
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    Subquery,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Now, RowNumber
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_dataflows.conf import app_settings
from django_dataflows.exceptions import (
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
    validate_json_object,
    validate_queue_name,
    validate_registered_flow,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from django_dataflows.apps import DataFlowsConfig


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


class DataFlowQuerySet(models.QuerySet["DataFlow"]):
    def enabled(self) -> DataFlowQuerySet:
        return self.filter(enabled=True)

    def due_to_run(self, now: datetime | None = None) -> DataFlowQuerySet:
        """Enabled flows whose ``next_run_at`` has come (uses the due index)."""
        return self.filter(enabled=True, next_run_at__lte=now or timezone.now())

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
        if self.flow and isinstance(self.configuration, dict):
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
        """
        now = now or timezone.now()
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
        ``self.input`` of the flow. See :func:`django_dataflows.bookkeeping.create_pending_run`.
        """
        return _run_service().create_pending_run(
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
        return _run_service().create_backfill(self, start, end, rerun=rerun, user=user, force=force)

    def trigger_run(
        self,
        trigger: str = RunTrigger.MANUAL,
        user: AbstractBaseUser | AnonymousUser | None = None,
        *,
        input: dict[str, Any] | None = None,
        attempt: int = 1,
    ) -> DataFlowRun:
        """Start a run: record it as pending and hand it to the backend after commit.

        This is the one way a run starts (see :func:`django_dataflows.backends.trigger_run`).
        ``input`` is the run's own parameters (a JSON object, else ``ValidationError``; the
        flow reads it as ``self.input``). With the default in-process backend and no
        surrounding transaction the run has finished when this returns; the returned object
        is refreshed to show it. Raises
        ``RunAlreadyActive`` if a run is active, and ``EnqueueFailed`` if the backend
        refused the run. Inside a transaction (for example with ``ATOMIC_REQUESTS``) the
        run is handed over when it commits; a refusal then is logged and recorded on the
        run, as nobody is left to catch it.
        """
        return _run_service().trigger_run(
            self, trigger=trigger, user=user, input=input, attempt=attempt
        )


def hand_to_backend(run: DataFlowRun) -> None:
    """Hand a pending run (a resumed one) to the backend, once the transaction has committed.

    See :func:`django_dataflows.backends.hand_over`, where this lands.
    """
    _run_service().hand_to_backend(run)


def _run_service() -> DataFlowsConfig:
    """The app config, which connects these models to what starts runs.

    Starting a run needs the bookkeeping and the backends, which sit above the models and
    import them; the models import neither (not even lazily), and ask the app instead.
    """
    return cast("DataFlowsConfig", apps.get_app_config("dataflows"))


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
    **dict.fromkeys(("avg_duration_ms", "min_duration_ms", "max_duration_ms")),
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


def _run_stats(row: dict[str, Any], percentiles: dict[str, float | None]) -> RunStats:
    rated = sum(row[status] for status in RATED_STATUSES)
    avg = row["avg_duration_ms"]
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
        avg_duration_ms=None if avg is None else round(float(avg), 3),
        min_duration_ms=row["min_duration_ms"],
        max_duration_ms=row["max_duration_ms"],
        p50_duration_ms=percentiles["p50_duration_ms"],
        p95_duration_ms=percentiles["p95_duration_ms"],
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
        rated. Durations (average, minimum, maximum and the exact, interpolated 50th and 95th
        percentiles) are over the same rated runs.

        At most three queries, whatever the number of runs: the counts and averages, then
        the percentiles: on PostgreSQL one ``percentile_cont`` for up to
        ``SORTED_PERCENTILES_LIMIT`` rated runs; beyond that (and on other databases) one
        ordered ``OFFSET`` query per percentile, which reads the partial index of rated
        durations instead of sorting a million values.
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

    def stats_per_flow(self, since: datetime | None = None) -> dict[int, RunStats]:
        """:meth:`stats` for each flow of these runs, keyed by flow id, in two queries at most.

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
                "data_flow_id", "status", "duration_ms"
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
        DataFlow, on_delete=models.CASCADE, related_name="runs", verbose_name=_("data flow")
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
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
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
    duration_ms = models.PositiveBigIntegerField(
        _("duration (ms)"), null=True, blank=True, editable=False
    )
    activated_at = models.DateTimeField(
        _("activated at"),
        null=True,
        blank=True,
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
            models.Index(fields=("data_flow", "created_at"), name="dataflows_run_flow_created_idx"),
            models.Index(fields=("status", "created_at"), name="dataflows_run_status_idx"),
            models.Index(fields=("data_flow", "duration_ms"), name="dataflows_run_duration_idx"),
            models.Index(fields=("updated_at",), name="dataflows_run_updated_idx"),
            # Statistics read these without touching the table (index-only scans on
            # PostgreSQL): a time range, and one flow's runs by status. Key columns rather
            # than INCLUDE, which other databases ignore with a system-check warning.
            models.Index(
                fields=("created_at", "data_flow", "status", "duration_ms", "deleted_at"),
                name="dataflows_run_created_idx",
            ),
            models.Index(
                fields=("data_flow", "status", "duration_ms", "deleted_at", "created_at"),
                name="dataflows_run_flow_stat_idx",
            ),
            # The durations the percentiles of many runs read in order (OFFSET), unsorted.
            models.Index(
                fields=("duration_ms",),
                condition=Q(
                    status__in=RATED_STATUSES, duration_ms__isnull=False, deleted_at__isnull=True
                ),
                name="dataflows_run_rated_ms_idx",
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
    duration_ms = models.PositiveBigIntegerField(_("duration (ms)"), null=True, blank=True)
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


# -- pipelines ----------------------------------------------------------------------------


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
