"""``manage.py dataflows_prune --older-than DAYS``: delete old finished runs in short batches.

Soft-deleted runs (``run.soft_delete()``, ``DELETE`` in the API) go too, whatever their age.
Each batch is its own short transaction found on an index (the soft-deleted runs' partial
index, then ``created_at`` in order from where the last batch stopped), so heartbeats and
workers go on meanwhile and the table is never read whole. Statistics keep the pruned runs:
deleting a run leaves its rollups as they are.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from django_dataflows.models import FINISHED_STATUSES, DataFlowRun, DataFlowRunQuerySet


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Delete finished runs created more than DAYS days ago, and every soft-deleted run, "
        "in short batches, showing progress. Active runs are never deleted; statistics keep "
        "the deleted runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=_positive_int, required=True, metavar="DAYS")
        parser.add_argument(
            "--status",
            action="append",
            choices=[str(status) for status in FINISHED_STATUSES],
            help="Only runs with this status (repeatable). Default: every finished status.",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive_int,
            default=1000,
            help="Runs deleted per transaction (default 1000).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        cutoff = timezone.now() - timedelta(days=options["older_than"])
        statuses = options["status"] or list(FINISHED_STATUSES)
        # Two indexed selections rather than one OR, which no index answers.
        deleted = DataFlowRun.objects.deleted()
        old = DataFlowRun.objects.not_deleted().filter(created_at__lt=cutoff, status__in=statuses)
        total = deleted.count() + old.count()
        if options["dry_run"]:
            self.stdout.write(
                f"Would delete {total} run(s) created before {cutoff:%Y-%m-%d %H:%M}."
            )
            return
        if total == 0:
            self.stdout.write("Nothing to delete.")
            return
        self.done = 0
        self.longest = 0.0
        self.total = total
        started = time.monotonic()
        batch_size = options["batch_size"]
        while self._delete_batch(deleted.order_by("deleted_at", "pk"), batch_size):
            pass
        position: tuple[datetime, int] | None = None
        while True:
            page = old if position is None else old.filter(_after(*position))
            rows = list(
                page.order_by("created_at", "pk").values_list("created_at", "pk")[:batch_size]
            )
            if not rows:
                break
            position = rows[-1]
            self._delete_batch(
                DataFlowRun.objects.filter(pk__in=[pk for _c, pk in rows]), batch_size
            )
        self.stderr.write("")
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {self.done} run(s). {time.monotonic() - started:.1f} s, "
                f"longest batch {self.longest:.2f} s."
            )
        )

    def _delete_batch(self, runs: DataFlowRunQuerySet, batch_size: int) -> int:
        """Delete up to ``batch_size`` of ``runs`` (their steps too) in one transaction."""
        began = time.monotonic()
        with transaction.atomic():
            ids = list(runs.values_list("pk", flat=True)[:batch_size])
            if not ids:
                return 0
            # Django's delete() follows every foreign key to runs (steps, logs, ...); only
            # the primary keys are loaded.
            _count, per_model = DataFlowRun.objects.filter(pk__in=ids).only("pk").delete()
        count = per_model.get(DataFlowRun._meta.label, 0)
        self.done += count
        self.longest = max(self.longest, time.monotonic() - began)
        self.stderr.write(f"Deleted {self.done}/{self.total} run(s)…", ending="\r")
        self.stderr.flush()
        return count


def _after(created_at: datetime, pk: int) -> Q:
    """Runs after ``(created_at, pk)`` in the order the batches walk."""
    return Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk)
