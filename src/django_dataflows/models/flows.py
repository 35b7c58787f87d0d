"""``DataFlow``: a schedulable flow, its queryset, and the rules that guard it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import MinValueValidator, validate_email
from django.db import connection, models, transaction
from django.db.models import (
    Exists,
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_dataflows.clock import database_now
from django_dataflows.conf import app_settings
from django_dataflows.exceptions import (
    FlowHasActiveRun,
    FlowNotRegistered,
)
from django_dataflows.flows import Flow, get_flow_class
from django_dataflows.schedules import (
    Catchup,
    InvalidSchedule,
    next_cron_slot,
    upcoming_cron_slots,
    validate_cron,
    validate_timezone,
)
from django_dataflows.validators import (
    configuration_errors,
    storable_json_problem,
    validate_configuration_object,
    validate_json_object,
    validate_queue_name,
    validate_registered_flow,
)

from .access import (
    OWNER_MANAGE_PERMISSIONS,
    OWNER_VIEW_PERMISSIONS,
    _is_active_user,
    may_see_every_flow,
)
from .choices import ACTIVE_STATUSES, RunStatus, RunTrigger, WaitFor
from .runs import DataFlowRun
from .starter import _starter

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from .backfills import Backfill


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


def owns_a_flow(user: Any) -> bool:
    """Whether ``user`` owns at least one flow (one indexed query)."""
    return _is_active_user(user) and DataFlow.objects.filter(owner_id=user.pk).exists()


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
