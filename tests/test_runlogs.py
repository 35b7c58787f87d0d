"""Run logs and run cost: what a flow logs and prints is kept with its run."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlowRun, DataFlowRunLog, RunStatus
from tests.factories import DataFlowFactory

pytestmark = pytest.mark.django_db

LOG_TABLE = DataFlowRunLog._meta.db_table


def talk(**configuration):
    flow = DataFlowFactory(flow="tests.testapp.flows.Talks", configuration=configuration)
    with contextlib.suppress(ValueError):  # the flows told to fail
        FlowExecutor.execute(flow)
    return DataFlowRun.objects.get(data_flow=flow)


def lines(run: DataFlowRun) -> list[tuple[int, str, str, str]]:
    return list(run.logs.values_list("position", "level", "logger", "message"))


def test_a_flow_that_logs_nothing_writes_nothing_more():
    flow = DataFlowFactory(flow="tests.testapp.flows.Talks", configuration={})

    with CaptureQueriesContext(connection) as queries:
        FlowExecutor.execute(flow)

    assert not [q for q in queries if LOG_TABLE in q["sql"]]
    assert DataFlowRunLog.objects.count() == 0


def test_what_the_flow_logs_is_kept_in_order_in_one_write():
    flow = DataFlowFactory(
        name="chatty", flow="tests.testapp.flows.Talks", configuration={"lines": 10}
    )

    with CaptureQueriesContext(connection) as queries:
        FlowExecutor.execute(flow)

    run = DataFlowRun.objects.get(data_flow=flow)
    assert lines(run) == [
        (n + 1, "INFO", "django_dataflows.flow.chatty", f"line {n}") for n in range(10)
    ]
    inserts = [q for q in queries if LOG_TABLE in q["sql"] and "INSERT" in q["sql"].upper()]
    assert len(inserts) == 1


def test_printed_lines_are_kept_and_still_printed(capsys):
    run = talk(prints=2)

    assert [(level, name, message) for _, level, name, message in lines(run)] == [
        ("INFO", "stdout", "printed 0"),
        ("INFO", "stdout", "printed 1"),
    ]
    assert capsys.readouterr().out == "printed 0\nprinted 1\n"


def test_records_below_the_run_log_level_are_left_out(settings):
    settings.DATAFLOWS = {"RUN_LOG_LEVEL": "WARNING"}

    run = talk(lines=2, debug=2, other=1)

    assert [message for *_, message in lines(run)] == ["library says 0"]


def test_other_libraries_logging_in_the_flow_are_kept():
    run = talk(other=2)

    assert [(name, message) for _, _, name, message in lines(run)] == [
        ("tests.somelibrary", "library says 0"),
        ("tests.somelibrary", "library says 1"),
    ]


def test_a_thread_the_flow_starts_is_not_the_flow():
    run = talk(lines=1, thread=True)

    assert [message for *_, message in lines(run)] == ["line 0"]


def test_logging_outside_any_run_is_never_kept():
    logging.getLogger("tests.outside").warning("not in a run")
    talk(lines=1)

    assert list(DataFlowRunLog.objects.values_list("message", flat=True)) == ["line 0"]


@pytest.mark.django_db(transaction=True)
def test_another_thread_logging_while_the_flow_runs_is_not_captured():
    """A web process: another request's thread logs while a flow runs in this one."""
    flow_started, other_logged = threading.Event(), threading.Event()

    def other_request() -> None:
        assert flow_started.wait(30)
        logging.getLogger("tests.request").warning("another request")
        print("another request prints")
        other_logged.set()

    other = threading.Thread(target=other_request)
    other.start()

    def wait_for_other(sender, run, **kwargs):
        flow_started.set()
        assert other_logged.wait(30)

    from django_dataflows import signals

    signals.run_started.connect(wait_for_other)
    try:
        run = talk(lines=1)
    finally:
        signals.run_started.disconnect(wait_for_other)
        other.join()

    assert [message for *_, message in lines(run)] == ["line 0"]


def test_a_failing_flow_keeps_its_log_and_the_backtrace_it_logged():
    run = talk(lines=1, fail=True)

    assert run.status == RunStatus.FAILED
    (_, _, _, first), (_, level, _, second) = lines(run)
    assert first == "line 0"
    assert level == "ERROR"
    assert second.startswith("could not find it\nTraceback")
    assert "KeyError: 'missing'" in second


def test_each_line_names_the_step_it_was_logged_in():
    flow = DataFlowFactory(flow="tests.testapp.flows.TalksInSteps")
    FlowExecutor.execute(flow)

    run = DataFlowRun.objects.get(data_flow=flow)
    assert list(run.logs.values_list("step", "message")) == [
        ("extract", "extracting"),
        ("load", "loading"),
    ]


# -- limits and bad input --------------------------------------------------------------


def test_past_the_line_limit_lines_are_counted_and_one_line_says_so(settings):
    settings.DATAFLOWS = {"RUN_LOG_MAX_LINES": 5}

    run = talk(lines=8, prints=2)

    assert run.status == RunStatus.SUCCESS
    kept = lines(run)
    assert [message for *_, message in kept[:5]] == [f"line {n}" for n in range(5)]
    assert len(kept) == 6
    assert kept[5][1] == "WARNING"
    assert kept[5][3].startswith("5 more lines dropped: the run's log is limited to 5 lines")


@pytest.mark.slow
def test_a_million_lines_keep_the_limit_and_the_outcome(settings):
    settings.DATAFLOWS = {"RUN_LOG_MAX_LINES": 100}

    run = talk(prints=1_000_000)

    assert (run.status, run.result) == (RunStatus.SUCCESS, {"said": 0})
    assert run.logs.count() == 101
    assert run.logs.last().message.startswith("999900 more lines dropped")


def test_a_fifty_megabyte_line_is_cut_to_the_byte_limit(settings):
    settings.DATAFLOWS = {"RUN_LOG_MAX_BYTES": 1_000}

    run = talk(big=50_000_000, odd=True)

    assert run.status == RunStatus.SUCCESS
    cut, dropped = run.logs.all()
    assert cut.message == "x" * 1_000 + " [cut: RUN_LOG_MAX_BYTES reached]"
    assert dropped.message.startswith("2 more lines dropped")


def test_bytes_that_are_not_utf8_surrogates_and_nul_are_stored_readably():
    run = talk(odd=True)

    assert [message for *_, message in lines(run)] == [
        "bytes b'\\xff\\xfe'",
        "surrogate \\udcff and NUL \\x00 end",
    ]


def test_a_record_whose_arguments_do_not_format_is_kept_with_a_note(monkeypatch):
    # pytest's own log capture turns a logging error into a failure; the standard
    # handlers print it and go on.
    monkeypatch.setattr(
        "_pytest.logging.LogCaptureHandler.handleError", logging.Handler.handleError
    )
    monkeypatch.setattr(logging, "raiseExceptions", False)

    run = talk(bad_args=True, lines=1)

    assert run.status == RunStatus.SUCCESS
    [_, (_, _, _, message)] = lines(run)
    assert message.startswith("'%d rows' (its arguments could not be formatted: TypeError")


def test_a_flow_that_replaces_stdout_leaves_the_process_its_output(capsys):
    before = sys.stdout

    run = talk(replace_stdout=True, prints=1)
    print("after the run")

    assert run.status == RunStatus.SUCCESS
    assert sys.stdout is before
    assert capsys.readouterr().out == "printed 0\nafter the run\n"


def test_a_log_write_that_fails_never_changes_the_outcome(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("log table gone")

    monkeypatch.setattr(DataFlowRunLog.objects, "bulk_create", refuse)

    run = talk(lines=3)

    assert (run.status, run.logs.count()) == (RunStatus.SUCCESS, 0)


def test_the_logs_go_with_their_run():
    run = talk(lines=3)

    run.delete()

    assert DataFlowRunLog.objects.count() == 0


# -- cost ---------------------------------------------------------------------------------


def test_a_run_stores_the_queries_its_body_made_and_its_cpu_time():
    run = talk(queries=3)

    assert run.db_queries == 3
    assert run.cpu_time_ms is not None
    assert run.cpu_time_ms >= 0


def test_a_failed_run_stores_its_cost_too():
    run = talk(queries=2, fail=True)

    assert (run.status, run.db_queries) == (RunStatus.FAILED, 2)
    assert run.cpu_time_ms is not None


# -- reading: the API ---------------------------------------------------------------------


@pytest.fixture
def api():
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_api_pages_a_runs_log_by_position(api):
    run = talk(lines=3)

    first = api.get(f"/dataflows/api/runs/{run.pk}/logs/").json()
    after = api.get(f"/dataflows/api/runs/{run.pk}/logs/?after=2").json()

    assert [line["message"] for line in first["results"]] == ["line 0", "line 1", "line 2"]
    assert first["results"][0]["level"] == "INFO"
    assert (first["after"], first["complete"]) == (3, True)
    assert [line["position"] for line in after["results"]] == [3]
    assert api.get(f"/dataflows/api/runs/{run.pk}/logs/?after=3").json() == {
        "results": [],
        "after": 3,
        "complete": True,
    }


def test_the_api_refuses_a_bad_position(api):
    run = talk(lines=1)

    response = api.get(f"/dataflows/api/runs/{run.pk}/logs/?after=-1")

    assert response.status_code == 400
    assert "after" in response.json()


def test_the_log_of_a_run_one_may_not_see_is_not_found():
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    run = talk(lines=1)
    client = APIClient()
    client.force_authenticate(UserFactory())

    assert client.get(f"/dataflows/api/runs/{run.pk}/logs/").status_code in (403, 404)


def test_the_api_shows_a_runs_cost(api):
    run = talk(queries=2)

    body = api.get(f"/dataflows/api/runs/{run.pk}/").json()

    assert body["db_queries"] == 2
    assert body["cpu_time_ms"] == run.cpu_time_ms
    assert body["late"] is False


# -- reading: the command -----------------------------------------------------------------


def test_the_command_prints_a_runs_log():
    from io import StringIO

    from django.core.management import call_command

    run = talk(lines=2)
    out = StringIO()

    call_command("dataflows_logs", str(run.pk), stdout=out)

    printed = out.getvalue().splitlines()
    assert len(printed) == 2
    assert printed[0].endswith(f"INFO     django_dataflows.flow.{run.data_flow.name}: line 0")


def test_the_command_follows_a_running_run_until_it_ends(monkeypatch):
    from io import StringIO

    from django.core.management import call_command

    from django_dataflows.management.commands import dataflows_logs
    from tests.factories import DataFlowRunFactory

    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    DataFlowRunLog.objects.create(run=run, position=1, level="INFO", message="first")
    waits = []

    def the_run_goes_on(seconds):
        waits.append(seconds)
        DataFlowRunLog.objects.create(run=run, position=2, level="INFO", message="last")
        DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)

    monkeypatch.setattr(dataflows_logs.time, "sleep", the_run_goes_on)
    out = StringIO()

    call_command("dataflows_logs", str(run.pk), "--follow", stdout=out)

    assert [line.split(": ")[-1] for line in out.getvalue().splitlines()] == ["first", "last"]
    assert waits == [dataflows_logs.FOLLOW_INTERVAL]


def test_the_command_names_a_missing_run():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="There is no run 999"):
        call_command("dataflows_logs", "999")


# -- reading: the admin -------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    from tests.factories import UserFactory

    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_run_page_shows_the_log_tail_and_the_cost(staff_client):
    run = talk(lines=2, queries=1)

    page = staff_client.get(f"/admin/dataflows/dataflowrun/{run.pk}/change/").content.decode()

    assert 'id="dataflows-run-log"' in page
    assert f"django_dataflows.flow.{run.data_flow.name}: line 1" in page
    assert "1 database queries" in page
    assert "django_dataflows/runlog.js" in page


def test_the_run_pages_log_view_answers_the_lines_after_a_position(staff_client):
    run = talk(lines=3)

    body = staff_client.get(f"/admin/dataflows/dataflowrun/{run.pk}/logs/?after=1").json()

    assert [line["message"] for line in body["results"]] == ["line 1", "line 2"]
    assert (body["after"], body["complete"]) == (3, True)
    assert (
        staff_client.get(f"/admin/dataflows/dataflowrun/{run.pk}/logs/?after=x").status_code == 400
    )
    assert staff_client.get("/admin/dataflows/dataflowrun/999/logs/").status_code == 404


def test_a_resumed_run_numbers_its_lines_after_the_ones_before_the_pause(
    django_capture_on_commit_callbacks,
):
    flow = DataFlowFactory(
        flow="tests.testapp.flows.TalksInSteps", configuration={"pause_once": True}
    )
    FlowExecutor.execute(flow)
    run = DataFlowRun.objects.get(data_flow=flow)
    assert run.status == RunStatus.PAUSED

    with django_capture_on_commit_callbacks(execute=True):
        FlowExecutor.resume(run)  # the sync backend runs it again at once

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert list(run.logs.values_list("position", "step", "message")) == [
        (1, "extract", "extracting"),
        (2, "load", "loading"),
        (3, "load", "loading"),
    ]


# -- reading: the run's live stream ------------------------------------------------------


def test_a_runs_stream_sends_the_log_lines_written_after_it_opened():
    from django_dataflows.live.base import load_run_ids
    from django_dataflows.live.streams import Stream
    from tests.factories import DataFlowRunFactory

    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    DataFlowRunLog.objects.create(run=run, position=1, level="INFO", message="before")
    stream = Stream(run_id=run.pk)
    stream.opening()
    DataFlowRunLog.objects.create(
        run=run, position=2, level="WARNING", logger="x", message="after", step="load"
    )
    DataFlowRun.objects.filter(pk=run.pk).update()  # what a batch of lines does

    chunks = stream.receive(load_run_ids([run.pk]))

    events = [chunk.decode() for chunk in chunks if chunk.startswith(b"event: log")]
    assert len(events) == 1
    data = json.loads(events[0].split("data: ", 1)[1])
    assert (data["run"], data["position"], data["message"], data["step"]) == (
        run.pk,
        2,
        "after",
        "load",
    )
    assert stream.receive(load_run_ids([run.pk])) == []  # sent once


@pytest.mark.django_db(transaction=True)  # batches wait while a transaction is open
def test_a_batch_written_while_the_run_goes_on_stamps_the_run(monkeypatch):
    from django_dataflows import runlogs

    monkeypatch.setattr(runlogs, "FLUSH_INTERVAL", 0)
    flow = DataFlowFactory(flow="tests.testapp.flows.Talks", configuration={"lines": 2})

    with CaptureQueriesContext(connection) as queries:
        FlowExecutor.execute(flow)

    run_table = DataFlowRun._meta.db_table
    # Only updated_at: not a transition, not progress (the run's own writes set more).
    touches = [
        q
        for q in queries
        if q["sql"].startswith("UPDATE")
        and run_table in q["sql"]
        and q["sql"].split(" SET ")[1].split(" WHERE ")[0].count("=") == 1
    ]
    assert DataFlowRunLog.objects.count() == 2
    assert len(touches) == 2  # a batch per line here
