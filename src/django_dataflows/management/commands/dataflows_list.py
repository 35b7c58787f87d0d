"""``manage.py dataflows_list``: a table of the data flows and their schedule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from django_dataflows.models import DataFlow, Heartbeat

COLUMNS = ("NAME", "ENABLED", "INTERVAL", "LAST STATUS", "LAST RUN", "NEXT RUN")


def _when(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


class Command(BaseCommand):
    help = "List data flows: name, enabled, interval, last status, last run, next run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--enabled", action="store_true", help="Only enabled flows.")

    def handle(self, *args: Any, **options: Any) -> None:
        flows = DataFlow.objects.order_by("name")
        if options["enabled"]:
            flows = flows.enabled()
        rows = [
            (
                flow.name,
                "yes" if flow.enabled else "no",
                f"{flow.run_interval}s",
                flow.last_run_status or "never run",
                _when(flow.last_run_at),
                _when(flow.next_run_at) if flow.enabled else "disabled",
            )
            for flow in flows.iterator()
        ]
        if not rows:
            self.stdout.write("No data flows.")
        else:
            self._write_table(rows)
        heartbeat = Heartbeat.last()
        self.stdout.write(
            f"Last heartbeat: {_when(heartbeat.received_at)} ({heartbeat.source}, "
            f"{heartbeat.client or 'unknown client'})"
            if heartbeat
            else "Last heartbeat: never"
        )

    def _write_table(self, rows: Sequence[tuple[str, ...]]) -> None:
        widths = [max(len(str(row[i])) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
        for row in (COLUMNS, *rows):
            self.stdout.write(
                "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
