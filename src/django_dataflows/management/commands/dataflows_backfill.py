"""``manage.py dataflows_backfill NAME --from --to``: run past slots of a flow's schedule."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from django_dataflows import audit, signals
from django_dataflows.backfills import next_backfill_runs
from django_dataflows.clock import database_now
from django_dataflows.management.as_user import add_as_user_argument, resolve_user
from django_dataflows.models import (
    AuditAction,
    AuditSource,
    Backfill,
    BackfillStatus,
    DataFlow,
    RunStatus,
)
from django_dataflows.scheduling import dispatch_in_turn


def instant(text: str) -> datetime:
    """An ISO 8601 date or date-time; a date is midnight, a naive time the current zone's."""
    value = parse_datetime(text)
    if value is None:
        day = parse_date(text)
        if day is None:
            raise ValueError(f"{text!r} is not an ISO 8601 date or date-time")
        value = datetime(day.year, day.month, day.day)
    return timezone.make_aware(value) if timezone.is_naive(value) else value


class Command(BaseCommand):
    help = (
        "Run every slot of a data flow's schedule in [--from, --to), oldest first, one at a "
        "time; slots that already succeeded are skipped unless --rerun. Prints progress and "
        "waits until the backfill is done (the heartbeat and the workers run the slots); "
        "with --no-wait it only records the backfill."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The DataFlow's name.")
        parser.add_argument(
            "--from",
            dest="start",
            required=True,
            type=instant,
            help="First instant (ISO 8601), included.",
        )
        parser.add_argument(
            "--to",
            dest="end",
            required=True,
            type=instant,
            help="Last instant (ISO 8601), excluded.",
        )
        parser.add_argument(
            "--rerun",
            action="store_true",
            help="Run slots that already succeeded again (the old runs stay).",
        )
        parser.add_argument("--force", action="store_true", help="Allow more than 10,000 slots.")
        parser.add_argument(
            "--no-wait",
            action="store_true",
            help="Record the backfill and return; the heartbeat runs it.",
        )
        add_as_user_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        user = resolve_user(options["as_user"])
        flows = DataFlow.objects.all() if user is None else DataFlow.objects.visible_to(user)
        try:
            data_flow = flows.get(name=name)
        except DataFlow.DoesNotExist:
            raise CommandError(f"No data flow named {name!r}.") from None
        if user is not None and not data_flow.user_may(user, "dataflows.run_dataflow"):
            raise CommandError(f"{user.get_username()!r} may not run {name!r}.")
        try:
            with transaction.atomic():
                backfill = data_flow.backfill(
                    options["start"],
                    options["end"],
                    rerun=options["rerun"],
                    user=user,
                    force=options["force"],
                )
                audit.record(
                    AuditAction.BACKFILL_STARTED,
                    source=AuditSource.COMMAND,
                    actor=user,
                    data_flow=data_flow,
                    details=backfill.audit_details(),
                )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        self.stdout.write(
            f"Backfill {backfill.pk} of {data_flow.name!r}: {backfill.total} slots in "
            f"[{backfill.start.isoformat()}, {backfill.end.isoformat()})"
        )
        if options["no_wait"]:
            return
        self._drive(backfill)

    def _drive(self, backfill: Backfill) -> None:
        """Start its slots from here, one after the other, printing progress, until it ends.

        With an asynchronous backend the runs go to the workers and this looks again until
        each has ended (a heartbeat may start a slot too: each slot still runs once).
        """
        shown = -1

        def show(done: int) -> None:
            nonlocal shown
            if done != shown:
                shown = done
                percent = round(100 * done / backfill.total) if backfill.total else 100
                self.stdout.write(f"{done}/{backfill.total} slots ({percent}%)")

        def on_run_finished(sender: Any, run: Any, **kwargs: Any) -> None:
            # In-process runs start one another: show each slot as it ends.
            if run.backfill_id == backfill.pk:
                # Slots handed out whose run has ended (the next may be queued already).
                done = Backfill.objects.values_list("done", flat=True).get(pk=backfill.pk)
                show(done - backfill.runs.active().count())

        signals.run_finished.connect(on_run_finished, weak=False)
        try:
            while True:
                with transaction.atomic():
                    runs = next_backfill_runs(database_now(), [backfill.data_flow_id])
                # In turn: in-process runs that start the next slot queue it here, so each
                # run's end is reported before the next one starts.
                dispatch_in_turn(runs)
                backfill.refresh_from_db()
                show(backfill.done)
                if backfill.status != BackfillStatus.RUNNING:
                    break
                if not runs:
                    # Its run is on another worker: look again shortly.
                    time.sleep(0.5)
        finally:
            signals.run_finished.disconnect(on_run_finished)
        failed = backfill.runs.exclude(status=RunStatus.SUCCESS).count()
        message = (
            f"Backfill {backfill.pk} {backfill.status}: {backfill.done}/{backfill.total} slots"
        )
        if failed:
            raise CommandError(f"{message}, {failed} runs not successful.", returncode=1)
        self.stdout.write(self.style.SUCCESS(message + "."))
