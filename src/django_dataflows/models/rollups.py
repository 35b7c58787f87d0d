"""Rollups: per flow and hour, the counts and duration histogram that statistics read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    pass


class RunRollup(models.Model):
    """The finished runs of one flow created within one hour: counts and durations.

    Written by database triggers in the statement that finishes, soft-deletes or changes a
    run (no extra commit); statistics add these rows up instead of reading the runs. A row
    outlives its runs: deleting a run (``dataflows_prune``) keeps its contribution, a soft
    delete takes it out. ``dataflows_rollups --rebuild`` recomputes them from the runs.
    """

    data_flow = models.ForeignKey(
        "DataFlow", on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
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
        "DataFlow", on_delete=models.CASCADE, related_name="+", verbose_name=_("data flow")
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
        indexes = (
            models.Index(fields=("span", "start"), name="dataflows_lvbucket_start_idx"),
            # The unique key plus the count: a page's flows' histograms are read from the
            # index alone. Their rows lie scattered over the table (the fold rewrites the
            # recent days and the whole histories), so reading them from the table took a
            # page per row: 122 ms instead of 20 ms for 100 flows' week at 10,000,000 runs.
            models.Index(
                fields=("span", "flow_id", "start", "bucket", "count"),
                name="dataflows_lvbucket_cover_idx",
            ),
        )

    def __str__(self) -> str:
        return f"{self.span} h from {self.start:%Y-%m-%d %H:00} bucket {self.bucket}"
