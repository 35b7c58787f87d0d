"""The Django admin for data flows, their runs, backfills and the audit trail.

Importing this package registers the model admins. One module per page or part of one:

* :mod:`.flows`, :mod:`.runs`, :mod:`.backfills`, :mod:`.owners` (the audit trail and the
  owner scoping every page uses): the model admins;
* :mod:`.forms`, :mod:`.display`, :mod:`.health`: their forms and presentation;
* :mod:`.control` (run actions, "Run with input…", steps), :mod:`.logs` (the log tail),
  :mod:`.live` (live updates and the dashboard), :mod:`.charts`, :mod:`.graph` (SVG),
  :mod:`.lists` (lists that never count the whole run table).

The admins are thin callers of the models and the run engine (:mod:`django_dataflows.runs`).
Subclass them from here (``from django_dataflows.admin import DataFlowAdmin``).
"""

from __future__ import annotations

from .backfills import BackfillAdmin
from .display import describe_interval, describe_schedule, format_duration
from .flows import DataFlowAdmin
from .owners import AuditEntryAdmin
from .runs import DataFlowRunAdmin

__all__ = [
    "AuditEntryAdmin",
    "BackfillAdmin",
    "DataFlowAdmin",
    "DataFlowRunAdmin",
    "describe_interval",
    "describe_schedule",
    "format_duration",
]
