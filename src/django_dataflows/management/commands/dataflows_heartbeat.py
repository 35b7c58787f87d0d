"""``manage.py dataflows_heartbeat``: the heartbeat without HTTP (for cron on the server)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_dataflows.scheduling import run_heartbeat


class Command(BaseCommand):
    help = (
        "Trigger every due data flow once, time out stuck runs, and print the same JSON "
        "counts as POST /dataflows/heartbeat/. Exits 1 if the backend refused a run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing on success.")

    def handle(self, *args: Any, **options: Any) -> None:
        result = run_heartbeat(source="command", client="manage.py")
        if not options["quiet"] or result.enqueue_failures:
            self.stdout.write(json.dumps(result.as_dict(), sort_keys=True))
        if result.enqueue_failures:
            raise CommandError(
                f"The backend refused {result.enqueue_failures} run(s); see the run records.",
                returncode=1,
            )
