"""``manage.py dataflows_rollups --rebuild | --fold``: recompute or fold the run statistics'
rollups."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from django_dataflows.models import DataFlow
from django_dataflows.rollups import RollupsUnsupported, fold_rollups, rebuild_rollups


def _moment(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        raise ValueError(value)
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


class Command(BaseCommand):
    help = (
        "--rebuild: recompute the hourly rollups that run statistics read, from the runs in "
        "the table, flow by flow, showing progress, then their days and all-flows levels. "
        "Safe to stop and run again. Runs already pruned are gone: their hours lose them "
        "unless --since leaves those hours alone. --fold: fold every changed hourly rollup "
        "into the levels now (the heartbeat does a few days at a time)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--rebuild", action="store_true", help="Recompute the rollups.")
        action.add_argument(
            "--fold", action="store_true", help="Fold the changed rollups into their levels."
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
        if options["fold"]:
            self._fold()
            return
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

    def _fold(self) -> None:
        def progress(day: datetime) -> None:
            self.stderr.write(f"Folded {day:%Y-%m-%d}…", ending="\r")
            self.stderr.flush()

        days = fold_rollups(progress=progress)
        self.stderr.write("")
        self.stdout.write(self.style.SUCCESS(f"Folded the changed rollups of {days} day(s)."))
