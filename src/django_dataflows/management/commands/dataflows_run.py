"""``manage.py dataflows_run NAME``: run a data flow now and print the outcome."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder

from django_dataflows import audit
from django_dataflows.backends import load_backend
from django_dataflows.exceptions import DataFlowError, RunAlreadyActive
from django_dataflows.management.as_user import add_as_user_argument, resolve_user
from django_dataflows.models import (
    AuditAction,
    AuditSource,
    DataFlow,
    DataFlowRun,
    RunStatus,
    RunTrigger,
)
from django_dataflows.runs.starting import trigger_run
from django_dataflows.validators import load_json_text

#: The backend of a run in the foreground.
SYNC_BACKEND = "django_dataflows.backends.sync.SyncBackend"


class Command(BaseCommand):
    help = (
        "Run a data flow now. By default it runs in the foreground, in this process "
        "(whatever the backend), prints its status and result, and exits 1 if it failed. "
        "With --enqueue it is handed to the configured backend instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The DataFlow's name.")
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="Hand the run to the configured backend instead of running it here.",
        )
        parser.add_argument(
            "--input",
            metavar="JSON",
            default=None,
            help="The run's input, a JSON object the flow reads as self.input, "
            'such as \'{"day": "2026-01-01"}\'.',
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
        run_input = self._parse_input(options["input"])
        try:
            run = self._start(data_flow, enqueue=options["enqueue"], run_input=run_input, user=user)
        except RunAlreadyActive as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(f"--input: {' '.join(exc.messages)}") from exc
        self.stdout.write(f"Run {run.pk} of {data_flow.name!r}: {run.status}")
        if run.duration is not None:
            self.stdout.write(f"Duration: {run.duration.total_seconds():.3f}s")
        if run.status == RunStatus.SUCCESS:
            result = json.dumps(run.result, cls=DjangoJSONEncoder, indent=2, sort_keys=True)
            self.stdout.write(self.style.SUCCESS(f"Result: {result}"))
        elif run.status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED):
            self.stderr.write(self.style.ERROR(f"Error: {run.error_message}"))
            raise CommandError(f"Data flow {data_flow.name!r} {run.status}.", returncode=1)

    @staticmethod
    def _parse_input(text: str | None) -> dict[str, Any] | None:
        if text is None:
            return None
        try:
            value = load_json_text(text)
        except ValueError as exc:
            raise CommandError(f"--input is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CommandError(
                f'--input must be a JSON object such as \'{{"day": "2026-01-01"}}\', '
                f"not {type(value).__name__}."
            )
        return value

    def _start(
        self, data_flow: DataFlow, *, enqueue: bool, run_input: dict[str, Any] | None, user: Any
    ) -> DataFlowRun:
        # The one way in, as any run: in the foreground it is the in-process backend's
        # turn, whatever DATAFLOWS["BACKEND"] says; a failure is recorded on the run.
        backend = None if enqueue else load_backend(SYNC_BACKEND)
        try:
            return trigger_run(
                data_flow,
                trigger=RunTrigger.COMMAND,
                user=user,
                input=run_input,
                backend=backend,
                on_recorded=lambda run: audit.record(
                    AuditAction.RUN_STARTED, source=AuditSource.COMMAND, actor=user, run=run
                ),
            )
        except RunAlreadyActive:
            raise
        except DataFlowError as exc:
            raise CommandError(str(exc)) from exc
