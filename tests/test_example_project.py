"""The example project, run for real: its flows against its own models, on a SQLite file.

Each test works in a subprocess with ``DJANGO_SETTINGS_MODULE=example_project.settings``
and its own copy of a migrated and seeded database, exactly as a newcomer would run it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from statistics import mean
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parent.parent
MANAGE = REPO_ROOT / "example_project" / "manage.py"
CSV_FILE = REPO_ROOT / "example_project" / "weather" / "data" / "observations.csv"
IMPORT = "Import weather observations"
SUMMARISE = "Summarise daily weather"
CHECK = "Check observation quality"
NIGHTLY = "Nightly weather summary (Berlin)"

pytestmark = [pytest.mark.slow, pytest.mark.example]

FIX_THE_BROKEN_READING = (
    "from example_project.weather.models import Observation\n"
    "obs = Observation.objects.get(station__code='DE-BER', date='2024-01-03')\n"
    "obs.temp_max_c = 3.1\n"
    "obs.save()\n"
    "answer = obs.pk"
)
LAST_RUN = (
    "from django_dataflows.models import DataFlowRun\n"
    "run = DataFlowRun.objects.filter(data_flow__name={name!r}).latest()\n"
    "answer = [run.status, run.error_message, bool(run.error_backtrace)]"
)


def example_env(database: Path, **extra: str) -> dict[str, str]:
    # The suite's own DATABASE_URL (PostgreSQL in `make test-postgres`) must not reach the
    # example, nor a broker or token from the developer's shell.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DATAFLOWS_HEARTBEAT_TOKEN")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        EXAMPLE_SQLITE_PATH=str(database),
        EXAMPLE_MAIL_DIR=str(database.parent / "mail"),
        PYTHONPATH=str(REPO_ROOT),
        **extra,
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(env, str(MANAGE), *args)


def query(env: dict[str, str], code: str) -> Any:
    """Run ``code`` in the example project; it must assign ``answer``, returned as JSON."""
    script = f"import django, json\ndjango.setup()\n{code}\nprint(json.dumps(answer))"
    process = run(env, "-c", script)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def count(env: dict[str, str], model: str) -> int:
    """How many rows ``model`` (``"app_label.Model"``) has."""
    return int(
        query(
            env, f"from django.apps import apps\nanswer = apps.get_model({model!r}).objects.count()"
        )
    )


def imported_days(env: dict[str, str]) -> list[str]:
    return query(
        env,
        "from example_project.weather.models import Observation\n"
        "answer = sorted({str(day) for day in Observation.objects.values_list('date', flat=True)})",
    )


def run_flow(env: dict[str, str], name: str) -> subprocess.CompletedProcess[str]:
    return manage(env, "dataflows_run", name)


def flow_result(process: subprocess.CompletedProcess[str]) -> Any:
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(process.stdout.split("Result: ", 1)[1])


def import_result(process: subprocess.CompletedProcess[str]) -> Any:
    """What the stepped import loaded: its ``load`` step's result."""
    return flow_result(process)["load"]


def csv_rows() -> list[dict[str, str]]:
    with CSV_FILE.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def seeded_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database with the example's flows, made once and copied by each test."""
    database = tmp_path_factory.mktemp("example") / "seeded.sqlite3"
    env = example_env(database)
    for command in (("migrate", "--no-input"), ("seed",)):
        process = manage(env, *command)
        assert process.returncode == 0, process.stderr
    # Fold SQLite's write-ahead log into the file, so that a plain copy has everything.
    query(
        env,
        "from django.db import connection\n"
        "with connection.cursor() as cursor:\n"
        "    answer = cursor.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()\n"
        "connection.close()",
    )
    return database


@pytest.fixture
def env(seeded_database: Path, tmp_path: Path) -> dict[str, str]:
    database = tmp_path / "example.sqlite3"
    shutil.copyfile(seeded_database, database)
    return example_env(database)


# -- the demo script -------------------------------------------------------------------


def test_demo_sets_up_everything_and_prints_the_first_heartbeat(tmp_path):
    process = run(
        example_env(tmp_path / "demo.sqlite3", DEMO_NO_SERVE="1"), "-m", "example_project.demo"
    )

    assert process.returncode == 0, process.stderr
    out = process.stdout
    assert "Applied" in out
    assert "Created user 'admin' with password 'dataflows-demo'" in out
    heartbeat = json.loads(out[out.index("{\n") : out.index("\n}") + 2])
    assert heartbeat["flows_due"] == 3
    assert heartbeat["flows_triggered"] == 3
    assert heartbeat["flows_failed"] == 1
    assert heartbeat["runs_timed_out"] == 0
    assert f"{IMPORT}: success" in out
    assert f"{CHECK}: failed - 1 implausible observation(s)" in out
    assert "Set-up finished in" in out


def test_demo_runs_again_on_its_own_database_without_duplicating_anything(tmp_path):
    env = example_env(tmp_path / "demo.sqlite3", DEMO_NO_SERVE="1")
    run(env, "-m", "example_project.demo")

    process = run(env, "-m", "example_project.demo")

    assert process.returncode == 0, process.stderr
    assert "The database is up to date." in process.stdout
    assert process.stdout.count("exists, left unchanged") == 5
    assert "User 'admin' exists already" in process.stdout
    assert (
        query(
            env, "from django_dataflows.models import DataFlow\nanswer = DataFlow.objects.count()"
        )
        == 5
    )


# -- the import flow -------------------------------------------------------------------


def test_import_flow_loads_the_first_days_of_the_csv_file(env):
    result = import_result(run_flow(env, IMPORT))

    assert result == {
        "imported": 20,
        "first_day": "2024-01-01",
        "last_day": "2024-01-05",
        "days_left": 86,
    }
    assert count(env, "weather.Observation") == 20
    assert imported_days(env) == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
    ]


def test_second_import_run_imports_only_the_next_days(env):
    run_flow(env, IMPORT)

    result = import_result(run_flow(env, IMPORT))

    assert result == {
        "imported": 20,
        "first_day": "2024-01-06",
        "last_day": "2024-01-10",
        "days_left": 81,
    }
    assert count(env, "weather.Observation") == 40
    assert len(imported_days(env)) == 10


def test_import_flow_imports_nothing_once_the_file_is_used_up(env):
    query(
        env,
        "from django_dataflows.models import DataFlow\n"
        f"answer = DataFlow.objects.filter(name={IMPORT!r})"
        ".update(configuration={'csv_file': 'observations.csv', 'days_per_run': 1000})",
    )
    everything = import_result(run_flow(env, IMPORT))

    nothing_new = import_result(run_flow(env, IMPORT))

    assert everything["imported"] == len(csv_rows())
    assert nothing_new == {"imported": 0, "first_day": None, "last_day": None, "days_left": 0}


def test_import_flow_refuses_a_file_outside_its_data_directory(env):
    query(
        env,
        "from django_dataflows.models import DataFlow\n"
        f"answer = DataFlow.objects.filter(name={IMPORT!r})"
        ".update(configuration={'csv_file': '../models.py'})",
    )

    process = run_flow(env, IMPORT)

    assert process.returncode == 1
    assert "csv_file: '../models.py' does not match" in process.stderr


def test_import_flow_runs_in_three_steps_keeps_its_cursor_in_state_and_reports_progress(env):
    run_flow(env, IMPORT)

    answer = query(
        env,
        "from django_dataflows.models import DataFlowRun\n"
        f"run = DataFlowRun.objects.filter(data_flow__name={IMPORT!r}).latest()\n"
        "answer = [list(run.steps.values_list('name', 'status')), run.progress, "
        "run.data_flow.state]",
    )

    steps, progress, state = answer
    assert steps == [["download", "success"], ["parse", "success"], ["load", "success"]]
    assert progress == {"done": 5, "total": 5, "message": "days loaded"}
    assert state == {"last_imported_day": "2024-01-05"}


# -- the summary flow ------------------------------------------------------------------


def test_summary_flow_fills_the_daily_summary_table_from_the_imported_rows(env):
    run_flow(env, IMPORT)

    result = flow_result(run_flow(env, SUMMARISE))

    assert result == {
        "days_summarised": 5,
        "first_day": "2024-01-01",
        "last_day": "2024-01-05",
        "days_in_table": 5,
    }
    first_day = [row for row in csv_rows() if row["date"] == "2024-01-01"]
    summary = query(
        env,
        "from example_project.weather.models import DailySummary\n"
        "s = DailySummary.objects.get(date='2024-01-01')\n"
        "answer = [s.stations_reporting, s.mean_temp_c, s.min_temp_c, s.max_temp_c, "
        "s.total_precipitation_mm]",
    )
    assert summary == [
        4,
        round(mean((float(r["temp_min_c"]) + float(r["temp_max_c"])) / 2 for r in first_day), 1),
        min(float(r["temp_min_c"]) for r in first_day),
        max(float(r["temp_max_c"]) for r in first_day),
        round(sum(float(r["precipitation_mm"]) for r in first_day), 1),
    ]


def test_summary_flow_summarises_only_new_days_on_the_next_run(env):
    run_flow(env, IMPORT)
    run_flow(env, SUMMARISE)
    run_flow(env, IMPORT)

    result = flow_result(run_flow(env, SUMMARISE))

    assert result["days_summarised"] == 5
    assert result["first_day"] == "2024-01-06"
    assert result["days_in_table"] == 10


def test_summary_flow_redoes_a_day_whose_observation_was_corrected(env):
    run_flow(env, IMPORT)
    run_flow(env, SUMMARISE)
    query(env, FIX_THE_BROKEN_READING)

    result = flow_result(run_flow(env, SUMMARISE))

    assert (result["days_summarised"], result["first_day"]) == (1, "2024-01-03")
    highest = query(
        env,
        "from example_project.weather.models import DailySummary\n"
        "answer = DailySummary.objects.get(date='2024-01-03').max_temp_c",
    )
    assert highest < 50


# -- the flow that fails on purpose ----------------------------------------------------


def test_quality_check_run_fails_with_a_message_naming_the_broken_reading(env):
    run_flow(env, IMPORT)

    process = run_flow(env, CHECK)

    assert process.returncode == 1
    assert "failed" in process.stdout
    assert "Error: 1 implausible observation(s)" in process.stderr
    status, message, has_backtrace = query(env, LAST_RUN.format(name=CHECK))
    assert status == "failed"
    assert "DE-BER on 2024-01-03: min -2.6 °C, max 99.9 °C" in message
    assert "Correct or delete them in the admin" in message
    assert has_backtrace
    assert (
        query(
            env,
            "from django_dataflows.models import DataFlow\n"
            f"answer = DataFlow.objects.get(name={CHECK!r}).last_run_status",
        )
        == "failed"
    )


def test_quality_check_succeeds_once_the_reading_is_corrected(env):
    run_flow(env, IMPORT)
    run_flow(env, CHECK)
    query(env, FIX_THE_BROKEN_READING)

    result = flow_result(run_flow(env, CHECK))

    assert result == {"observations_checked": 20, "implausible": 0}
    assert query(env, LAST_RUN.format(name=CHECK))[0] == "success"


# -- the heartbeat ---------------------------------------------------------------------


def test_heartbeat_command_runs_every_due_flow_and_prints_the_counts(env):
    process = manage(env, "dataflows_heartbeat")

    assert process.returncode == 0, process.stderr
    counts = json.loads(process.stdout)
    assert {key: counts[key] for key in counts if key != "timestamp"} == {
        "flows_due": 3,
        "flows_triggered": 3,
        "flows_skipped": 0,
        "flows_failed": 1,
        "runs_timed_out": 0,
        "flows_overdue": 0,
        "runs_redelivered": 0,
        "runs_never_picked_up": 0,
        "enqueue_failures": 0,
    }
    mails = "".join(path.read_text() for path in Path(env["EXAMPLE_MAIL_DIR"]).iterdir())
    assert f"Subject: [dataflows] {CHECK}: run" in mails  # the failure alert
    assert "To: data-team@example.com" in mails
    runs = query(
        env,
        "from django_dataflows.models import DataFlowRun\n"
        "answer = sorted(DataFlowRun.objects.values_list('data_flow__name', 'trigger', 'status'))",
    )
    assert runs == [
        [CHECK, "schedule", "failed"],
        [IMPORT, "schedule", "success"],
        [AFTER_IMPORT, "upstream", "success"],  # started by the import's success
        [SUMMARISE, "schedule", "success"],
    ]


def test_heartbeat_right_after_another_finds_nothing_due(env):
    # Hourly slots, all due now: the demo's 20-second slots could come round between two
    # manage.py calls on a slow machine, which is the schedule working, not a repeat.
    query(
        env,
        "from django.utils import timezone\n"
        "from django_dataflows.models import DataFlow\n"
        "answer = DataFlow.objects.filter(cron='', run_interval__isnull=False).update(\n"
        "    run_interval=3600, next_run_at=timezone.now())",
    )
    first = json.loads(manage(env, "dataflows_heartbeat").stdout)

    counts = json.loads(manage(env, "dataflows_heartbeat").stdout)

    assert first["flows_triggered"] == 3
    assert (counts["flows_due"], counts["flows_triggered"]) == (0, 0)


# -- the project itself ----------------------------------------------------------------


def test_seed_twice_keeps_the_flows_and_the_edits_made_to_them(env):
    query(
        env,
        "from django_dataflows.models import DataFlow\n"
        f"answer = DataFlow.objects.filter(name={SUMMARISE!r}).update(run_interval=600)",
    )

    process = manage(env, "seed")

    assert process.returncode == 0, process.stderr
    assert process.stdout.count("exists, left unchanged") == 5
    assert query(
        env,
        "from django_dataflows.models import DataFlow\n"
        "answer = sorted(DataFlow.objects.values_list('name', 'run_interval'))",
    ) == [[CHECK, 45], [IMPORT, 20], [NIGHTLY, None], [AFTER_IMPORT, None], [SUMMARISE, 600]]


def test_the_nightly_flow_runs_on_berlin_time_with_a_dead_mans_switch(env):
    answer = query(
        env,
        "import zoneinfo\n"
        "from django_dataflows.models import DataFlow\n"
        f"flow = DataFlow.objects.get(name={NIGHTLY!r})\n"
        "berlin = zoneinfo.ZoneInfo('Europe/Berlin')\n"
        "slots = [slot.astimezone(berlin).strftime('%H:%M') for slot in flow.upcoming_runs(2)]\n"
        "answer = [flow.cron, flow.timezone, flow.alert_after, flow.is_overdue, slots]",
    )

    assert answer == ["30 2 * * *", "Europe/Berlin", 93600, False, ["02:30", "02:30"]]


def test_seed_reset_data_empties_the_weather_tables(env):
    run_flow(env, IMPORT)
    run_flow(env, SUMMARISE)

    process = manage(env, "seed", "--reset-data")

    assert process.returncode == 0, process.stderr
    assert "Deleted 20 observation(s) and 5 daily summary row(s)." in process.stdout
    assert import_result(run_flow(env, IMPORT))["first_day"] == "2024-01-01"


def test_example_system_checks_pass(env):
    process = manage(env, "check", "--fail-level", "WARNING")

    assert process.returncode == 0, process.stdout + process.stderr


def test_example_migrations_are_up_to_date(env):
    process = manage(env, "makemigrations", "--check", "--dry-run")

    assert process.returncode == 0, process.stdout + process.stderr


def test_celery_broker_url_switches_to_the_celery_backend_and_app(env):
    if find_spec("celery") is None:
        skip_or_fail('needs Celery: pip install -e ".[celery]"')
    broker = "redis://127.0.0.1:6379/0"
    env = {**env, "CELERY_BROKER_URL": broker}

    answer = query(
        env,
        "from django.conf import settings\n"
        "from example_project import celery_app\n"
        "answer = [settings.DATAFLOWS['BACKEND'], celery_app.conf.broker_url, celery_app.main]",
    )

    assert answer == ["django_dataflows.backends.celery.CeleryBackend", broker, "example_project"]


def test_database_url_switches_the_database(env, tmp_path):
    env = {**env, "DATABASE_URL": f"sqlite:///{tmp_path / 'from-url.sqlite3'}"}

    name = query(
        env, "from django.conf import settings\nanswer = str(settings.DATABASES['default']['NAME'])"
    )

    assert name.endswith("from-url.sqlite3")


@pytest.fixture
def postgres_example_url() -> Iterator[str]:
    """A new PostgreSQL database beside the suite's own, dropped afterwards."""
    import dj_database_url
    import psycopg

    url = os.environ["DATABASE_URL"]  # the postgres marker skips the test without it
    config = dj_database_url.parse(url)
    name = f"{config['NAME']}_example_{os.getpid()}"
    admin = psycopg.connect(
        host=config["HOST"] or None,
        port=config["PORT"] or None,
        user=config["USER"] or None,
        password=config["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    drop = psycopg.sql.SQL("DROP DATABASE IF EXISTS {}").format(psycopg.sql.Identifier(name))
    with admin:
        admin.execute(drop)
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
        admin.execute(drop)


@pytest.mark.postgres
def test_example_flows_run_on_postgresql(tmp_path, postgres_example_url):
    env = example_env(tmp_path / "unused.sqlite3", DATABASE_URL=postgres_example_url)

    demo = run({**env, "DEMO_NO_SERVE": "1"}, "-m", "example_project.demo")
    second_import = import_result(run_flow(env, IMPORT))
    summary = flow_result(run_flow(env, SUMMARISE))

    assert demo.returncode == 0, demo.stderr
    assert '"flows_failed": 1' in demo.stdout
    assert second_import["first_day"] == "2024-01-06"
    assert summary["days_summarised"] == 5
    assert count(env, "weather.DailySummary") == 10


def test_check_deploy_passes_with_the_api_installed(env):
    if find_spec("drf_spectacular") is None:
        skip_or_fail("the api extra is not installed")
    process = manage(env, "check", "--deploy")

    output = process.stdout + process.stderr
    # The demo mails to files, which Django 6.1's deploy check calls an error (mail.E001);
    # no error may come from this app or the API's schema.
    errors = set(re.findall(r"\((\w+\.E\d+)\)", output)) - {"mail.E001"}
    assert errors == set(), output
    assert process.returncode == 0 or "mail.E001" in output, process.stderr


AFTER_IMPORT = "Report after import"


def test_the_report_runs_after_each_successful_import(env):
    run_flow(env, IMPORT)

    run = query(
        env,
        "from django_dataflows.models import DataFlowRun\n"
        f"run = DataFlowRun.objects.get(data_flow__name={AFTER_IMPORT!r})\n"
        "answer = [run.status, run.trigger, run.generation, run.result]",
    )
    assert run[:3] == ["success", "upstream", 1]
    assert run[3]["after_import"]["imported"] == 20  # 5 days of four stations
    assert run[3]["stations_per_day"] == {f"2024-01-0{day}": 4 for day in range(1, 6)}


def test_the_nightly_summary_backfills_the_last_seven_days(env):
    process = manage(
        env,
        "dataflows_backfill",
        NIGHTLY,
        "--from",
        "2024-03-01",
        "--to",
        "2024-03-08",
    )

    assert process.returncode == 0, process.stdout + process.stderr
    assert "7/7 slots (100%)" in process.stdout
    slots = query(
        env,
        "from django_dataflows.models import DataFlowRun\n"
        f"runs = DataFlowRun.objects.filter(data_flow__name={NIGHTLY!r}, trigger='backfill')\n"
        "answer = [run.scheduled_for.isoformat() for run in runs.order_by('scheduled_for')]",
    )
    # 02:30 Berlin is 01:30 UTC in winter.
    assert slots == [f"2024-03-0{day}T01:30:00+00:00" for day in range(1, 8)]
