"""``manage.py dataflows_logs RUN_ID [--follow]``: print what a run logged."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_dataflows.models import DataFlowRun, DataFlowRunLog
from django_dataflows.runlogs import log_lines

#: Seconds between two looks at a followed run's log.
FOLLOW_INTERVAL = 1.0


class Command(BaseCommand):
    help = (
        "Print a run's log lines (time, level, logger, step, message). With --follow, keep "
        "printing new lines until the run has ended."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", type=int, help="The run's id.")
        parser.add_argument(
            "--follow",
            "-f",
            action="store_true",
            help="Wait for new lines until the run ends (at most one query a second).",
        )
        parser.add_argument(
            "--after", type=int, default=0, help="Start after this line position (default 0)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        run_id: int = options["run_id"]
        if not DataFlowRun.objects.filter(pk=run_id).exists():
            raise CommandError(f"There is no run {run_id}.")
        after: int = options["after"]
        while True:
            # The status first: a run seen ended has written its last lines already.
            active = options["follow"] and self._active(run_id)
            lines = log_lines(run_id, after=after)
            for line in lines:
                self.stdout.write(_format(line))
            if lines:
                after = lines[-1].position
                continue  # maybe a full page: read on at once
            if not active:
                break
            time.sleep(FOLLOW_INTERVAL)

    @staticmethod
    def _active(run_id: int) -> bool:
        """Still running (or waiting): more lines may come."""
        return DataFlowRun.objects.filter(pk=run_id).active().exists()


def _format(line: DataFlowRunLog) -> str:
    when = timezone.localtime(line.created_at).strftime("%Y-%m-%d %H:%M:%S")
    step = f" [{line.step}]" if line.step else ""
    return f"{when} {line.level:<8} {line.logger}{step}: {line.message}"
