"""``manage.py dataflows_list``: a table of the data flows and their schedule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_dataflows.management.as_user import add_as_user_argument, resolve_user
from django_dataflows.models import DataFlow, Heartbeat

COLUMNS = ("NAME", "ENABLED", "SCHEDULE", "LAST STATUS", "LAST RUN", "NEXT RUN", "OVERDUE")


def _when(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _schedule(flow: DataFlow) -> str:
    if flow.cron:
        return f"{flow.cron} ({flow.timezone or 'TIME_ZONE'})"
    return f"{flow.run_interval}s" if flow.run_interval is not None else "-"


class Command(BaseCommand):
    help = (
        "List data flows: name, enabled, schedule, last status, last run, next run, overdue. "
        "With --overdue, only overdue flows, and exit with status 1 if there are any."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--enabled", action="store_true", help="Only enabled flows.")
        parser.add_argument(
            "--overdue",
            action="store_true",
            help="Only overdue flows (alert_after passed without a success); exit 1 if any.",
        )
        add_as_user_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        user = resolve_user(options["as_user"])
        now = timezone.now()
        flows = (
            DataFlow.objects.overdue(now)
            if options["overdue"]
            else DataFlow.objects.with_overdue_since()
        ).order_by("name")
        if options["enabled"]:
            flows = flows.enabled()
        if user is not None:
            flows = flows.visible_to(user)
        rows = [
            (
                flow.name,
                "yes" if flow.enabled else "no",
                _schedule(flow),
                flow.last_run_status or "never run",
                _when(flow.last_run_at),
                _when(flow.next_run_at) if flow.enabled else "disabled",
                f"since {_when(flow.compute_overdue_since())}" if flow.is_overdue else "-",
            )
            for flow in flows.iterator()
        ]
        if not rows:
            self.stdout.write("No overdue data flows." if options["overdue"] else "No data flows.")
        else:
            self._write_table(rows)
        heartbeat = Heartbeat.last()
        self.stdout.write(
            f"Last heartbeat: {_when(heartbeat.received_at)} ({heartbeat.source}, "
            f"{heartbeat.client or 'unknown client'})"
            if heartbeat
            else "Last heartbeat: never"
        )
        if options["overdue"] and rows:
            # For monitoring: a cron job or a check that runs this command pages on status 1.
            raise CommandError(f"{len(rows)} data flow(s) overdue.", returncode=1)

    def _write_table(self, rows: Sequence[tuple[str, ...]]) -> None:
        widths = [max(len(str(row[i])) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
        for row in (COLUMNS, *rows):
            self.stdout.write(
                "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
