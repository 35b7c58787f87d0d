"""What a run can be: its statuses, what started it, how a downstream flow waits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import models
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    pass


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
