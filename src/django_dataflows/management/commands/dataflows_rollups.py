"""``manage.py dataflows_rollups --rebuild``: recompute the run statistics' rollups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_dataflows.models import DataFlow
from django_dataflows.rollups import RollupsUnsupported, rebuild_rollups


def _moment(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        raise ValueError(value)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


class Command(BaseCommand):
    help = (
        "Recompute the hourly rollups that run statistics read, from the runs in the table, "
        "flow by flow, showing progress. Safe to stop and run again. Runs already pruned are "
        "gone: their hours lose them unless --since leaves those hours alone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rebuild", action="store_true", required=True, help="Recompute the rollups."
        )
        parser.add_argument(
            "--flow", action="append", metavar="NAME", help="Only this flow (repeatable)."
        )
        parser.add_argument(
            "--since",
            type=_moment,
            metavar="ISO-8601",
            help="Only the hours from this moment's hour on (older hours stay as they are).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        flow_ids = None
        if options["flow"]:
            found = dict(
                DataFlow.objects.filter(name__in=options["flow"]).values_list("name", "pk")
            )
            missing = sorted(set(options["flow"]) - set(found))
            if missing:
                raise CommandError(f"No data flow named {', '.join(map(repr, missing))}.")
            flow_ids = list(found.values())

        def progress(done: int, total: int) -> None:
            self.stderr.write(f"Rebuilt {done}/{total} flow(s)…", ending="\r")
            self.stderr.flush()

        try:
            count = rebuild_rollups(flow_ids, since=options["since"], progress=progress)
        except RollupsUnsupported as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write("")
        self.stdout.write(self.style.SUCCESS(f"Rebuilt the rollups of {count} flow(s)."))
