"""Run the example project: ``python -m example_project.demo`` from the repository root.

This is what ``make demo`` runs. It migrates the database, creates the example flows and an
admin user, runs one heartbeat and prints its JSON, then serves the site on
http://127.0.0.1:8000/ while a background thread calls the heartbeat every 10 seconds (in
production, cron or a systemd timer does that).

Environment variables:

``DEMO_NO_SERVE=1``
    stop after the first heartbeat (the tests use it);
``DEMO_ADDRPORT``
    where to serve instead of ``127.0.0.1:8000``;
``DEMO_HEARTBEAT_EVERY``
    seconds between the background heartbeats (default 10; 0 turns the thread off).

The settings' own variables (``DATABASE_URL``, ``CELERY_BROKER_URL``, …) apply too.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import close_old_connections, connection  # noqa: E402
from django.db.migrations.executor import MigrationExecutor  # noqa: E402

from django_dataflows.conf import app_settings  # noqa: E402
from django_dataflows.models import DataFlowRun  # noqa: E402
from django_dataflows.scheduling import HeartbeatResult, run_heartbeat  # noqa: E402

ADMIN_USERNAME = "admin"
#: Printed in the banner and written in example_project/README.md; for a local demo only.
ADMIN_PASSWORD = "dataflows-demo"  # noqa: S105
ADDRPORT = os.environ.get("DEMO_ADDRPORT", "127.0.0.1:8000")
HEARTBEAT_EVERY = float(os.environ.get("DEMO_HEARTBEAT_EVERY", "10"))


def step(number: int, total: int, text: str) -> None:
    print(f"[{number}/{total}] {text}", flush=True)


class MigrationProgress(io.TextIOBase):
    """Turns ``migrate``'s "Applying app.0001_initial... OK" lines into one progress line."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.interactive = sys.stdout.isatty()

    def write(self, text: str) -> int:
        for name in re.findall(r"Applying (\S+)\.\.\.", text):
            self.done += 1
            if self.interactive:
                print(f"\r      {self.done}/{self.total} {name}".ljust(72), end="", flush=True)
        return len(text)


def migrate() -> None:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if not plan:
        print("      The database is up to date.")
        return
    progress = MigrationProgress(len(plan))
    call_command("migrate", interactive=False, verbosity=1, stdout=progress)
    end = "\r" if progress.interactive else ""
    print(f"{end}      Applied {progress.done} migrations.".ljust(72), flush=True)


def create_admin_user() -> None:
    user_model = get_user_model()
    if user_model.objects.filter(username=ADMIN_USERNAME).exists():
        print(f"      User {ADMIN_USERNAME!r} exists already; its password is left as it is.")
        return
    user_model.objects.create_superuser(ADMIN_USERNAME, "admin@example.com", ADMIN_PASSWORD)
    print(f"      Created user {ADMIN_USERNAME!r} with password {ADMIN_PASSWORD!r}.")


def describe_runs(result: HeartbeatResult) -> list[str]:
    """One line per run the heartbeat started, with its outcome so far."""
    lines = []
    runs = (
        DataFlowRun.objects.filter(pk__in=result.run_ids)
        .select_related("data_flow")
        .prefetch_related("steps")
    )
    for run in runs.order_by("pk"):
        if run.is_active:
            outcome = "queued for a worker" if run.task_id else "not finished yet"
        else:
            outcome = run.error_message or json.dumps(run.result)
        if len(outcome) > 110:
            outcome = outcome[:107] + "..."
        lines.append(f"      {run.data_flow.name}: {run.status} - {outcome}")
        steps = [
            f"{step.name} {step.status}"
            + (f" ({step.duration_ms} ms)" if step.duration_ms is not None else "")
            for step in run.steps.all()
        ]
        if steps:
            lines.append(f"        steps: {', '.join(steps)}")
        if run.progress:
            progress = run.progress
            total = f" of {progress['total']}" if progress.get("total") else ""
            lines.append(f"        progress: {progress['done']}{total} {progress['message']}")
    return lines


def beat_forever(every: float) -> None:
    """What cron does in production: call the heartbeat on a fixed period."""
    while True:
        time.sleep(every)
        try:
            result = run_heartbeat(source="command", client="demo.py thread")
            counts = result.as_dict()
            print(
                f"[heartbeat {time.strftime('%H:%M:%S')}] due={counts['flows_due']} "
                f"triggered={counts['flows_triggered']} failed={counts['flows_failed']} "
                f"skipped={counts['flows_skipped']}",
                flush=True,
            )
            for line in describe_runs(result):
                print(line, flush=True)
        except Exception as exc:  # keep beating: one bad heartbeat must not end the demo
            print(f"[heartbeat] failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            close_old_connections()


def python_command() -> str:
    """How to call this interpreter from the repository root, for the banner."""
    executable = Path(sys.executable)
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return "python"


def banner() -> str:
    url = f"http://{ADDRPORT}"
    python = python_command()
    where = (
        "Runs are sent to Celery workers (CELERY_BROKER_URL is set)."
        if "celery" in app_settings.BACKEND.lower()
        else "Runs execute in this process (the in-process SyncBackend)."
    )
    beating = (
        f"A background thread calls the heartbeat every {HEARTBEAT_EVERY:g} seconds, so the\n"
        "  flows run on schedule without cron (in production, cron calls it)."
        if HEARTBEAT_EVERY > 0
        else "The background heartbeat is off (DEMO_HEARTBEAT_EVERY=0): call it yourself."
    )
    rule = "=" * 78
    return f"""
{rule}
  django-dataflows demo
{rule}
  Admin:      {url}/admin/
              user {ADMIN_USERNAME!r}, password {ADMIN_PASSWORD!r}
  Flows:      {url}/admin/dataflows/dataflow/
  Runs:       {url}/admin/dataflows/dataflowrun/
  Weather:    {url}/admin/weather/dailysummary/
  Heartbeat:  POST {url}/dataflows/heartbeat/

  {beating}
  {where}

  Call the heartbeat yourself from another terminal (in the repository root):
      curl -X POST {url}/dataflows/heartbeat/
      {python} example_project/manage.py dataflows_heartbeat

  Stop with Ctrl+C. Start again from scratch: rm -r example_project/var
{rule}
"""


def main() -> None:
    started = time.monotonic()
    database = settings.DATABASES["default"]
    total = 4
    step(
        1,
        total,
        f"Migrating the database ({database['ENGINE'].rsplit('.', 1)[-1]}: {database['NAME']})",
    )
    migrate()
    step(2, total, "Creating the example data flows")
    call_command("seed")
    step(3, total, "Creating the admin user")
    create_admin_user()
    step(4, total, "Running one heartbeat (what cron calls in production)")
    result = run_heartbeat(source="command", client="demo.py")
    print(json.dumps(result.as_dict(), indent=2))
    for line in describe_runs(result):
        print(line)
    print(f"Set-up finished in {time.monotonic() - started:.1f}s.", flush=True)
    if os.environ.get("DEMO_NO_SERVE") == "1":
        return
    close_old_connections()
    if HEARTBEAT_EVERY > 0:
        threading.Thread(
            target=beat_forever, args=(HEARTBEAT_EVERY,), name="demo-heartbeat", daemon=True
        ).start()
    print(banner(), flush=True)
    call_command("runserver", ADDRPORT, use_reloader=False, skip_checks=False)


if __name__ == "__main__":
    main()
