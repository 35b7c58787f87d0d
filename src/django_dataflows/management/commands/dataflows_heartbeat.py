"""``manage.py dataflows_heartbeat``: the heartbeat without HTTP (for cron on the server)."""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError

from django_dataflows.scheduling import run_heartbeat

logger = logging.getLogger("django_dataflows.heartbeat")


class Command(BaseCommand):
    help = (
        "Trigger every due data flow once, time out stuck runs, and print the same JSON "
        "counts as POST /dataflows/heartbeat/. Exits 1 if the backend refused a run, 2 if "
        "the database is unavailable."
    )
    # Cron calls this every minute: the system checks run at deploy and server start, and
    # some touch the database (Django 6.1 checks generated columns against it), which
    # must not turn "the database is down" into a backtrace here.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Print nothing on success.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = run_heartbeat(source="command", client="manage.py")
        except (OperationalError, InterfaceError) as exc:
            # The database cannot be reached (or dropped the connection). Other database
            # errors (a missing migration, a bug) raise as they are, with their backtrace.
            self._could_not_run(f"The database is unavailable: {exc}".strip())
        if not options["quiet"] or result.enqueue_failures:
            self.stdout.write(json.dumps(result.as_dict(), sort_keys=True))
        if result.enqueue_failures:
            raise CommandError(
                f"The backend refused {result.enqueue_failures} run(s); see the run records.",
                returncode=1,
            )

    def _could_not_run(self, error: str) -> NoReturn:
        """Say why as the endpoint's 503 does (JSON, even with ``--quiet``); exit 2.

        The backtrace goes to the log where ``LOGGING`` sends it, not to cron's mail (with
        no handler configured, Python would print it on stderr: then it is left out).
        """
        if logger.hasHandlers():
            logger.exception("Heartbeat failed: %s", error)
        self.stdout.write(json.dumps({"detail": error, "error": error}))
        raise CommandError(error, returncode=2)
