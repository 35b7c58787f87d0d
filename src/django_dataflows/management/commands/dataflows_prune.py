"""``manage.py dataflows_prune --older-than DAYS``: delete old finished runs in batches.

Soft-deleted runs (``run.soft_delete()``, ``DELETE`` in the API) go too, whatever their age.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Q
from django.utils import timezone

from django_dataflows.models import FINISHED_STATUSES, DataFlowRun


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Delete finished runs created more than DAYS days ago, and every soft-deleted run, "
        "in batches, showing progress. Active runs are never deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=_positive_int, required=True, metavar="DAYS")
        parser.add_argument(
            "--status",
            action="append",
            choices=[str(status) for status in FINISHED_STATUSES],
            help="Only runs with this status (repeatable). Default: every finished status.",
        )
        parser.add_argument("--batch-size", type=_positive_int, default=5000)
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(days=options["older_than"])
        statuses = options["status"] or list(FINISHED_STATUSES)
        runs = DataFlowRun.objects.filter(
            Q(created_at__lt=cutoff, status__in=statuses) | Q(deleted_at__isnull=False)
        )
        total = runs.count()
        if options["dry_run"]:
            self.stdout.write(
                f"Would delete {total} run(s) created before {cutoff:%Y-%m-%d %H:%M}."
            )
            return
        if total == 0:
            self.stdout.write("Nothing to delete.")
            return
        deleted = 0
        batch_size = options["batch_size"]
        while True:
            # Delete by primary key in small batches so locks stay short and memory flat.
            batch = list(runs.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not batch:
                break
            deleted += DataFlowRun.objects.filter(pk__in=batch).delete()[0]
            self.stderr.write(f"Deleted {deleted}/{total} run(s)…", ending="\r")
            self.stderr.flush()
        self.stderr.write("")
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} run(s)."))
