"""Management commands: dataflows_run, dataflows_list, dataflows_prune."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_dataflows.models import DataFlow, DataFlowRun, DataFlowRunStep, RunStatus, RunTrigger
from tests.factories import DataFlowFactory, DataFlowRunFactory

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db


def run_command(*args, **options):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# -- dataflows_run ------------------------------------------------------------------


# Outside a transaction, as a management command runs: the run is handed over at once.
@pytest.mark.django_db(transaction=True)
def test_run_prints_status_and_result():
    DataFlowFactory(name="orders")

    out, _ = run_command("dataflows_run", "orders")

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.SUCCESS
    assert run.trigger == RunTrigger.COMMAND
    assert f"Run {run.pk} of 'orders': success" in out
    assert '"rows": 1' in out


# Outside a transaction, as a management command runs: the run is handed over at once.
@pytest.mark.django_db(transaction=True)
def test_run_of_a_failing_flow_exits_1_with_the_error():
    DataFlowFactory(name="broken", flow="tests.testapp.flows.Explode")

    with pytest.raises(CommandError) as info:
        run_command("dataflows_run", "broken")

    assert info.value.returncode == 1
    assert DataFlowRun.objects.get().status == RunStatus.FAILED


def test_run_of_an_unknown_name_is_a_clear_error():
    with pytest.raises(CommandError, match="No data flow named 'nope'"):
        run_command("dataflows_run", "nope")


def test_run_refuses_while_a_run_is_active():
    data_flow = DataFlowFactory(name="busy")
    data_flow.create_pending_run()

    with pytest.raises(CommandError, match="already has a pending or in-progress run"):
        run_command("dataflows_run", "busy")


def test_run_with_enqueue_hands_the_run_to_the_backend(dummy_backend):
    DataFlowFactory(name="orders")

    out, _ = run_command("dataflows_run", "orders", "--enqueue")

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.PENDING
    assert "pending" in out


def test_run_with_enqueue_refuses_while_a_run_is_active(dummy_backend):
    DataFlowFactory(name="busy").create_pending_run()

    with pytest.raises(CommandError, match="already has"):
        run_command("dataflows_run", "busy", "--enqueue")


@pytest.mark.django_db(transaction=True)
def test_run_with_input_gives_the_flow_its_input():
    DataFlowFactory(name="echo", flow="tests.testapp.flows.EchoInput")

    out, _ = run_command("dataflows_run", "echo", "--input", '{"day": "2026-01-01"}')

    run = DataFlowRun.objects.get()
    assert run.input == {"day": "2026-01-01"}
    assert run.result == {"input": {"day": "2026-01-01"}}
    assert '"day": "2026-01-01"' in out


def test_run_with_enqueue_stores_the_input(dummy_backend):
    DataFlowFactory(name="echo", flow="tests.testapp.flows.EchoInput")

    run_command("dataflows_run", "echo", "--enqueue", "--input", '{"n": 3}')

    assert DataFlowRun.objects.get().input == {"n": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{day: 1}", "--input is not valid JSON: Expecting property name"),
        ("[1, 2]", "--input must be a JSON object"),
        ('{"x": NaN}', "--input: The run input contains a number that is not finite"),
        ('{"x": "a\\u0000"}', "--input: The run input contains a NUL character"),
        pytest.param(
            '{"x": ' * 5000 + "1" + "}" * 5000,
            # Refused while parsing, or by the storable-JSON rule where Python's decoder
            # takes that depth (3.13): the same limit named either way.
            "--input.*nested deeper than 32 levels",
            id="nested-5000-deep",
        ),
    ],
)
def test_run_with_bad_input_is_a_clear_error_and_starts_nothing(text, message):
    DataFlowFactory(name="echo", flow="tests.testapp.flows.EchoInput")

    with pytest.raises(CommandError, match=message):
        run_command("dataflows_run", "echo", "--input", text)

    assert not DataFlowRun.objects.exists()


# -- dataflows_list -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_list_shows_a_table_of_flows():
    DataFlowFactory(name="orders", run_interval=300)
    DataFlowFactory(name="archive", enabled=False)
    run_command("dataflows_run", "orders")

    out, _ = run_command("dataflows_list")

    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "ENABLED",
        "SCHEDULE",
        "LAST",
        "STATUS",
        "LAST",
        "RUN",
        "NEXT",
        "RUN",
        "OVERDUE",
    ]
    assert lines[1].split()[:4] == ["archive", "no", "60s", "never"]
    assert lines[1].split()[-2:] == ["disabled", "-"]
    assert lines[2].split()[:4] == ["orders", "yes", "300s", "success"]


def test_list_shows_a_cron_schedule_with_its_zone():
    DataFlowFactory(
        name="nightly", run_interval=None, cron="30 2 * * 1-5", timezone="Europe/Berlin"
    )

    out, _ = run_command("dataflows_list")

    assert "nightly  yes      30 2 * * 1-5 (Europe/Berlin)  never run" in out


def test_list_overdue_prints_overdue_flows_and_exits_1():
    late = DataFlowFactory(name="late", alert_after=60)
    DataFlow.objects.filter(pk=late.pk).update(
        created_at=timezone.now() - datetime.timedelta(minutes=5)
    )
    DataFlowFactory(name="fresh", alert_after=3600)

    with pytest.raises(CommandError, match=r"1 data flow\(s\) overdue") as raised:
        run_command("dataflows_list", "--overdue")

    assert raised.value.returncode == 1


def test_list_overdue_with_none_overdue_exits_0():
    DataFlowFactory(name="fresh", alert_after=3600)

    assert run_command("dataflows_list", "--overdue")[0] == (
        "No overdue data flows.\nLast heartbeat: never\n"
    )


def test_list_with_enabled_only_and_when_empty():
    DataFlowFactory(name="archive", enabled=False)

    assert run_command("dataflows_list", "--enabled")[0] == (
        "No data flows.\nLast heartbeat: never\n"
    )


def test_list_says_when_the_last_heartbeat_arrived():
    run_command("dataflows_heartbeat", "--quiet")

    out, _ = run_command("dataflows_list")

    assert out.splitlines()[-1].startswith("Last heartbeat: 20")
    assert out.splitlines()[-1].endswith("(command, manage.py)")


# -- dataflows_prune ----------------------------------------------------------------


def make_runs(count, days_old, status=RunStatus.SUCCESS, data_flow=None):
    created = timezone.now() - datetime.timedelta(days=days_old)
    return DataFlowRunFactory.create_batch(
        count, data_flow=data_flow or DataFlowFactory(), status=status, created_at=created
    )


def test_prune_deletes_old_finished_runs_in_batches_with_progress():
    old = make_runs(7, days_old=40)
    recent = make_runs(2, days_old=1)

    out, err = run_command("dataflows_prune", "--older-than", "30", "--batch-size", "3")

    assert set(DataFlowRun.objects.values_list("pk", flat=True)) == {run.pk for run in recent}
    assert "Deleted 7 run(s)." in out
    assert "Deleted 3/7" in err
    assert "Deleted 6/7" in err
    assert not DataFlowRun.objects.filter(pk__in=[run.pk for run in old]).exists()


def test_prune_never_deletes_active_runs():
    data_flow = DataFlowFactory()
    make_runs(1, days_old=90, status=RunStatus.IN_PROGRESS, data_flow=data_flow)

    out, _ = run_command("dataflows_prune", "--older-than", "30")

    assert DataFlowRun.objects.count() == 1
    assert out == "Nothing to delete.\n"


def test_prune_by_status():
    make_runs(2, days_old=40, status=RunStatus.FAILED)
    kept = make_runs(1, days_old=40, status=RunStatus.SUCCESS)

    run_command("dataflows_prune", "--older-than", "30", "--status", "failed")

    assert list(DataFlowRun.objects.all()) == kept


def test_prune_dry_run_deletes_nothing():
    make_runs(4, days_old=40)

    out, _ = run_command("dataflows_prune", "--older-than", "30", "--dry-run")

    assert out.startswith("Would delete 4 run(s)")
    assert DataFlowRun.objects.count() == 4


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "0"],
        ["--older-than", "soon"],
        [],
        ["--older-than", "3", "--status", "pending"],
    ],
)
def test_prune_rejects_bad_arguments(args):
    with pytest.raises(CommandError):
        run_command("dataflows_prune", *args)


def test_heartbeat_command_prints_the_counts():
    DataFlowFactory()

    out, _ = run_command("dataflows_heartbeat")

    counts = json.loads(out)
    assert counts["flows_due"] == 1
    assert counts["flows_triggered"] == 1
    assert DataFlowRun.objects.get().trigger == RunTrigger.SCHEDULE


def test_heartbeat_command_is_silent_with_quiet():
    assert run_command("dataflows_heartbeat", "--quiet") == ("", "")


def test_heartbeat_command_exits_1_when_the_backend_refuses_runs(settings):
    settings.DATAFLOWS = {"BACKEND": "tests.test_backends.RefusingBackend"}
    DataFlowFactory()

    with pytest.raises(CommandError, match="refused 1 run") as info:
        run_command("dataflows_heartbeat", "--quiet")

    assert info.value.returncode == 1


@pytest.mark.slow
def test_heartbeat_command_with_the_database_down_says_so_in_one_line_and_exits_2():
    # A real process on a database nobody listens on (port 1), as cron would run it.
    completed = subprocess.run(
        [sys.executable, "-m", "django", "dataflows_heartbeat", "--quiet"],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": "postgres://postgres@127.0.0.1:1/unreachable",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2, completed.stderr
    error = json.loads(completed.stdout)["error"]
    assert error.startswith("The database is unavailable: ")
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("CommandError: The database is unavailable")


def test_prune_counts_runs_not_their_steps_and_takes_soft_deleted_runs_of_any_age():
    old = make_runs(3, days_old=40)
    for run in old:
        DataFlowRunStep.objects.bulk_create(
            DataFlowRunStep(run=run, position=position, name=f"step {position}")
            for position in (1, 2)
        )
    recent_deleted = make_runs(1, days_old=1)[0]
    recent_deleted.soft_delete()
    kept = make_runs(1, days_old=1)

    out, err = run_command("dataflows_prune", "--older-than", "30", "--batch-size", "2")

    assert "Deleted 4 run(s)." in out
    assert "Deleted 4/4 run(s)" in err
    assert list(DataFlowRun.objects.all()) == kept
    assert not DataFlowRunStep.objects.exists()
