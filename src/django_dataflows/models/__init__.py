"""The app's models: flows, runs and what they record, statistics, audit, pipelines.

Each module is one part; they import each other downwards only (choices and access at the
bottom, then rollups and statistics, runs and steps, flows, and what hangs off a flow):

* :mod:`.choices`: run statuses, triggers and ``wait_for``;
* :mod:`.access`: who sees which flows and runs;
* :mod:`.starter`: how the models reach the run engine without importing it;
* :mod:`.rollups` and :mod:`.stats`: rollups (per flow and hour, and their coarser levels)
  and the statistics read from them;
* :mod:`.runs` and :mod:`.steps`: ``DataFlowRun``, its steps and its log lines;
* :mod:`.flows`: ``DataFlow`` and its queryset;
* :mod:`.heartbeats`, :mod:`.audit`, :mod:`.pipelines`, :mod:`.backfills`.

Import from here (``from django_dataflows.models import DataFlow``): these names are the
public contract; the modules behind them may move.
"""

from __future__ import annotations

from django_dataflows.schedules import Catchup, next_slot_after, next_slot_for, previous_slot_for

from .access import (
    OWNER_MANAGE_PERMISSIONS,
    OWNER_VIEW_PERMISSIONS,
    VIEW_FLOW_PERMISSION,
    VIEW_RUN_PERMISSION,
    may_see_every_flow,
    may_see_every_run,
)
from .audit import AuditAction, AuditEntry, AuditEntryQuerySet, AuditSource
from .backfills import Backfill, BackfillStatus
from .choices import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    RATED_STATUSES,
    RunStatus,
    RunTrigger,
    WaitFor,
)
from .flows import (
    SCHEDULER_FIELDS,
    DataFlow,
    DataFlowQuerySet,
    cycle_error,
    dependency_cycle,
    owns_a_flow,
    row_lock,
    split_alert_emails,
    validate_alert_emails,
)
from .heartbeats import Heartbeat
from .pipelines import UpstreamMark, mark_pipeline_flows
from .rollups import RunBucketLevel, RunDurationBucket, RunRollup, RunRollupLevel
from .runs import DataFlowRun, DataFlowRunQuerySet, announce_runs_changed, new_task_id
from .starter import RunStarter, use_run_starter
from .stats import (
    EXACT_DURATIONS_READ,
    EXACT_PERCENTILES_BELOW,
    ROLLUP_VENDORS,
    SORTED_PERCENTILES_LIMIT,
    RunStats,
)
from .steps import DataFlowRunLog, DataFlowRunStep, DataFlowRunStepQuerySet, StepStatus

__all__ = [
    "ACTIVE_STATUSES",
    "EXACT_DURATIONS_READ",
    "EXACT_PERCENTILES_BELOW",
    "FINISHED_STATUSES",
    "OWNER_MANAGE_PERMISSIONS",
    "OWNER_VIEW_PERMISSIONS",
    "RATED_STATUSES",
    "ROLLUP_VENDORS",
    "SCHEDULER_FIELDS",
    "SORTED_PERCENTILES_LIMIT",
    "VIEW_FLOW_PERMISSION",
    "VIEW_RUN_PERMISSION",
    "AuditAction",
    "AuditEntry",
    "AuditEntryQuerySet",
    "AuditSource",
    "Backfill",
    "BackfillStatus",
    "Catchup",
    "DataFlow",
    "DataFlowQuerySet",
    "DataFlowRun",
    "DataFlowRunLog",
    "DataFlowRunQuerySet",
    "DataFlowRunStep",
    "DataFlowRunStepQuerySet",
    "Heartbeat",
    "RunBucketLevel",
    "RunDurationBucket",
    "RunRollup",
    "RunRollupLevel",
    "RunStarter",
    "RunStats",
    "RunStatus",
    "RunTrigger",
    "StepStatus",
    "UpstreamMark",
    "WaitFor",
    "announce_runs_changed",
    "cycle_error",
    "dependency_cycle",
    "mark_pipeline_flows",
    "may_see_every_flow",
    "may_see_every_run",
    "new_task_id",
    "next_slot_after",
    "next_slot_for",
    "owns_a_flow",
    "previous_slot_for",
    "row_lock",
    "split_alert_emails",
    "use_run_starter",
    "validate_alert_emails",
]
