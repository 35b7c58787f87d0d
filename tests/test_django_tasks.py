"""The Django Tasks backend with the django-tasks-db database backend and its real worker.

Tests marked ``postgres`` run flows in a ``manage.py db_worker`` subprocess started once for
this module; it polls the ``default`` queue of the test database (hence PostgreSQL, which
both processes can see). Nobody polls ``parked``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import pytest
from django.db import connection

from django_dataflows.backends.django_tasks import DjangoTasksBackend
from django_dataflows.exceptions import EnqueueFailed
from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import WorkerProcess, tasks_db_worker, wait_for, worker_database_url
from tests.conftest import skip_or_fail
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

if find_spec("django_tasks_db") is None:
    skip_or_fail('needs django-tasks-db: pip install -e ".[tasks]"')

from django_tasks_db.models import DBTaskResult

from django_dataflows.tasks_django import run_data_flow

TASKS_BACKEND = "django_dataflows.backends.django_tasks.DjangoTasksBackend"
FINISHED = ("SUCCESSFUL", "FAILED")


@pytest.fixture
def tasks_backend(settings: Any) -> None:
    settings.DATAFLOWS = {**settings.DATAFLOWS, "BACKEND": TASKS_BACKEND}


@pytest.fixture(scope="module")
def db_worker(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    if connection.vendor != "postgresql":
        skip_or_fail("needs PostgreSQL: set DATABASE_URL=postgres://…")
    logs = tmp_path_factory.mktemp("tasks-workers")
    with tasks_db_worker(
        "tasks-main", ["default"], logs / "main.log", DATABASE_URL=worker_database_url()
    ) as worker:
        yield worker


def wait_for_task(task_id: str, worker: WorkerProcess) -> DBTaskResult:
    return wait_for(
        lambda: DBTaskResult.objects.filter(id=task_id, status__in=FINISHED).first(),
        what=f"task {task_id} to finish\n{worker.log()}",
    )


# -- system checks -----------------------------------------------------------------------


def test_the_check_passes_with_the_database_backend():
    assert DjangoTasksBackend().check() == []


def test_the_check_reports_a_missing_tasks_framework(monkeypatch):
    monkeypatch.setitem(sys.modules, "django.tasks", None)
    monkeypatch.setitem(sys.modules, "django_tasks", None)

    assert [message.id for message in DjangoTasksBackend().check()] == ["dataflows.E111"]


def test_the_check_reports_a_tasks_backend_that_cannot_be_loaded(settings):
    settings.TASKS = {"default": {"BACKEND": "no.such.TaskBackend"}}

    assert [message.id for message in DjangoTasksBackend().check()] == ["dataflows.E112"]


@pytest.mark.parametrize(
    ("dataflows", "missing"),
    [
        pytest.param({"DEFAULT_QUEUE": "nightly"}, "'nightly'", id="default-queue"),
        pytest.param({"ALLOWED_QUEUES": ["default", "exports"]}, "'exports'", id="allowed"),
    ],
)
def test_the_check_reports_queues_the_tasks_backend_does_not_accept(settings, dataflows, missing):
    settings.DATAFLOWS = {**settings.DATAFLOWS, **dataflows}

    [error] = DjangoTasksBackend().check()

    assert error.id == "dataflows.E113"
    assert error.msg.startswith(f"Queues {missing} of DATAFLOWS")


def test_a_tasks_backend_accepting_any_queue_needs_no_check(settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
    settings.DATAFLOWS = {**settings.DATAFLOWS, "DEFAULT_QUEUE": "nightly"}

    assert DjangoTasksBackend().check() == []


# -- enqueueing (no worker) ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_right_after_enqueueing_the_task_waits_on_the_runs_queue(tasks_backend):
    data_flow = DataFlowFactory(queue="parked")

    run = data_flow.trigger_run()

    task = DBTaskResult.objects.get()
    assert (task.status, task.queue_name) == ("READY", "parked")
    assert task.task_path == "django_dataflows.tasks_django.run_data_flow"
    assert task.args_kwargs == {"args": [run.pk], "kwargs": {}}
    assert run.task_id == str(task.id)
    stored = DataFlowRun.objects.get()
    assert (stored.status, stored.task_id, stored.queue) == (
        RunStatus.PENDING,
        str(task.id),
        "parked",
    )
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.PENDING
    assert data_flow.last_run_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_queue_the_tasks_backend_refuses_fails_the_run(tasks_backend):
    data_flow = DataFlowFactory(queue="nightly")  # not in TASKS["default"]["QUEUES"]

    with pytest.raises(EnqueueFailed):
        data_flow.trigger_run()

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message.startswith("Could not enqueue the run: ")
    assert "nightly" in run.error_message
    assert not DBTaskResult.objects.exists()


# -- the task's code, run in this process ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_second_execution_of_a_finished_run_does_not_run_the_flow_again(caplog):
    caplog.set_level(logging.INFO, logger="django_dataflows")
    run = DataFlowFactory().create_pending_run()
    run_data_flow.call(run.pk)

    run_data_flow.call(run.pk)

    assert Record.objects.filter(run_id=run.pk).count() == 1
    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert "not pending: a duplicate or late message; ignored" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_flows_exception_reaches_the_framework():
    run = DataFlowFactory(flow="tests.testapp.flows.Explode").create_pending_run()

    with pytest.raises(ValueError, match="boom"):
        run_data_flow.call(run.pk)

    assert DataFlowRun.objects.get().status == RunStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_task_for_a_deleted_run_is_dropped(caplog):
    run = DataFlowFactory().create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).delete()  # pruned, or deleted with its flow

    run_data_flow.call(run.pk)

    assert "does not exist" in caplog.text


# -- end to end: the database worker in a subprocess -------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_runs_the_flow_and_records_success(db_worker, tasks_backend):
    data_flow = DataFlowFactory(configuration={"label": "tasks-e2e"})

    run = data_flow.trigger_run()

    task = wait_for_task(run.task_id, db_worker)
    assert task.status == "SUCCESSFUL"
    assert task.worker_ids == ["tasks-main"]
    done = DataFlowRun.objects.get(pk=run.pk)
    assert done.status == RunStatus.SUCCESS
    assert done.result == {"rows": 1}
    assert done.duration is not None
    assert Record.objects.filter(label="tasks-e2e").count() == 1
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.SUCCESS


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_failure_is_recorded_with_its_backtrace_and_not_retried(db_worker, tasks_backend):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.Explode", max_retries=3)

    run = data_flow.trigger_run()

    task = wait_for_task(run.task_id, db_worker)
    assert task.status == "FAILED"
    assert task.exception_class_path == "builtins.ValueError"
    failed = DataFlowRun.objects.get(pk=run.pk)
    assert failed.status == RunStatus.FAILED
    assert failed.error_message == "boom"
    assert "ValueError: boom" in failed.error_backtrace
    assert data_flow.runs.count() == 1
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.FAILED


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_flow_routed_to_a_queue_runs_on_a_worker_of_that_queue(
    db_worker, tasks_backend, tmp_path
):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.RecordsWorker", queue="reports")

    run = data_flow.trigger_run()

    assert DBTaskResult.objects.get(id=run.task_id).queue_name == "reports"
    reports_worker = tasks_db_worker(
        "tasks-reports",
        ["reports"],
        tmp_path / "reports.log",
        batch=True,
        DATABASE_URL=worker_database_url(),
    )
    reports_worker.launch()
    assert reports_worker.wait_exit() == 0, reports_worker.log()
    done = DataFlowRun.objects.get(pk=run.pk)
    assert (done.status, done.result) == (RunStatus.SUCCESS, {"worker": "tasks-reports"})
    assert DBTaskResult.objects.get(id=run.task_id).worker_ids == ["tasks-reports"]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_enqueued_twice_runs_the_flow_once(db_worker):
    run = DataFlowFactory(configuration={"label": "tasks-twice"}).create_pending_run()

    results = [run_data_flow.using(queue_name="default").enqueue(run.pk) for _ in range(2)]

    for result in results:
        assert wait_for_task(result.id, db_worker).status == "SUCCESSFUL"
    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert Record.objects.filter(label="tasks-twice").count() == 1


def test_the_check_reports_queue_names_too_long_for_django_tasks_db(settings):
    long_name = "reports-for-the-finance-department"  # 34 characters
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
    settings.DATAFLOWS = {**settings.DATAFLOWS, "ALLOWED_QUEUES": ["default", long_name]}

    [error] = DjangoTasksBackend().check()

    assert error.id == "dataflows.E114"
    assert repr(long_name) in error.msg


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_paused_on_the_worker_resumes_without_running_its_done_step_again(
    db_worker, tasks_backend
):
    from django_dataflows.executor import FlowExecutor

    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.ThreeSteps", configuration={"wait_in": "one"}
    )
    run = data_flow.trigger_run()
    wait_for(
        lambda: run.steps.filter(name="one", status="in_progress").exists(),
        what=f"step one to start on the worker\n{db_worker.log()}",
    )

    FlowExecutor.pause(run)
    paused = wait_for(
        lambda: DataFlowRun.objects.filter(pk=run.pk, status=RunStatus.PAUSED).first(),
        what=f"the run to pause\n{db_worker.log()}",
    )
    assert list(paused.steps.values_list("status", flat=True)) == ["success", "pending", "pending"]

    resumed = FlowExecutor.resume(paused)

    assert resumed.task_id != run.task_id  # a new task of the framework
    task = wait_for_task(resumed.task_id, db_worker)
    assert task.status == "SUCCESSFUL"
    done = DataFlowRun.objects.get(pk=run.pk)
    assert done.status == RunStatus.SUCCESS
    assert done.result == {"one": {"value": 42}, "two": 43, "three": "done"}
    ran = Record.objects.filter(run_id=run.pk).order_by("pk").values_list("label", flat=True)
    assert list(ran) == ["step:one", "step:two", "step:three"]
