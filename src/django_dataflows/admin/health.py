"""The health box on the flow list: is the heartbeat alive, how many runs failed lately."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import (
    Count,
    Min,
)
from django.utils import timezone
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    Heartbeat,
)

from .display import (
    FAILURE_STATUSES,
    FAILURE_WINDOW,
    HEARTBEAT_STALE_INTERVALS,
    HEARTBEAT_STALE_MINIMUM,
    relative_time,
)

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
    # Stuck and unclaimed runs are judged by the database's clock, which stamped them,
    # unless a moment is given; the box's own texts are relative to this process's clock.
    judged_at = now
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
        stuck_runs=DataFlowRun.objects.stuck(judged_at).count()
        + DataFlowRun.objects.unclaimed(judged_at).count(),
        recent_failures=DataFlowRun.objects.filter(
            status__in=FAILURE_STATUSES, ended_at__gte=now - FAILURE_WINDOW
        ).count(),
        now=now,
    )
