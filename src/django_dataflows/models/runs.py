"""``DataFlowRun``: one execution of a flow, and the queryset every list and statistic uses."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, models, transaction
from django.db.models import (
    Count,
    ExpressionWrapper,
    F,
    Q,
    Sum,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Now, RowNumber, TruncHour
from django.utils.translation import gettext_lazy as _

import django_dataflows.rollup_levels as rollup_levels
import django_dataflows.rollup_sql as rollup_sql
from django_dataflows.clock import MillisecondsBetween
from django_dataflows.conf import app_settings
from django_dataflows.exceptions import (
    InvalidRunState,
)
from django_dataflows.schedules import (
    previous_slot_for,
)
from django_dataflows.signals import runs_changed
from django_dataflows.validators import (
    validate_json_object,
)

from .access import _is_active_user, may_see_every_run
from .choices import ACTIVE_STATUSES, RATED_STATUSES, RunStatus, RunTrigger
from .rollups import RunRollup, RunRollupLevel
from .stats import (
    _NO_RUNS,
    _STATS_COLUMNS,
    PERCENTILES,
    SORTED_PERCENTILES_LIMIT,
    _changed_rollups,
    _interpolate,
    _percentile_positions,
    _postgres_percentiles,
    _rollup_scope,
    _rollup_stats,
    _run_stats,
    _sorted_percentiles,
    _stats_sql,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from .stats import RunStats


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
        ``now`` defaults to the database's clock, the one that stamped the runs.
        """
        moment = Now() if now is None else Value(now)
        timeout = Coalesce(
            F("data_flow__timeout"),
            Value(app_settings.RUN_TIMEOUT),
            output_field=models.IntegerField(),
        )
        timeout_span = ExpressionWrapper(
            timeout * Value(timedelta(seconds=1)), output_field=models.DurationField()
        )
        deadline = ExpressionWrapper(moment - timeout_span, output_field=models.DateTimeField())
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
        run them died. ``now`` defaults to the database's clock, the one that stamped the runs.
        """
        moment = Now() if now is None else Value(now)
        deadline = ExpressionWrapper(
            moment - Value(timedelta(seconds=app_settings.PICKUP_TIMEOUT)),
            output_field=models.DateTimeField(),
        )
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
        "DataFlow",
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
            # (deleted_at is a key column rather than INCLUDEd: SQLite has no covering
            # indexes, and Django 6.1's checks warn about one on every SQLite project.)
            models.Index(
                fields=("created_at", "id", "deleted_at"), name="dataflows_run_newest_idx"
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
