"""Run logs on real workers: Celery's prefork and threads pools, Django Tasks' db_worker.

Each worker runs two flows that log and print; each run's log holds its own lines only,
once each (Celery turns printed lines into log records of its own: never kept twice).
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest
from django.db import connection

from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import (
    WorkerProcess,
    celery_worker,
    tasks_db_worker,
    wait_for,
    worker_database_url,
)
from tests.conftest import skip_or_fail
from tests.factories import DataFlowFactory

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CELERY = "django_dataflows.backends.celery.CeleryBackend"
TASKS = "django_dataflows.backends.django_tasks.DjangoTasksBackend"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    if connection.vendor != "postgresql":
        skip_or_fail("needs PostgreSQL: set DATABASE_URL=postgres://…")
    return tmp_path


def celery(pool: str, workdir: Path) -> WorkerProcess:
    from tests.test_celery import redis_client

    redis_client()  # skips (or fails) without Redis
    worker = celery_worker(
        f"logs-{pool}", ["default"], workdir / f"{pool}.log", pool=pool, **_env()
    )
    worker.argv[worker.argv.index("-c") + 1] = "2"  # two runs at once, in one process
    return worker


def _env() -> dict[str, str]:
    return {"DATABASE_URL": worker_database_url()}


def run_two_flows(worker: WorkerProcess) -> list[DataFlowRun]:
    flows = [
        DataFlowFactory(
            name=f"talker-{n}",
            flow="tests.testapp.flows.Talks",
            configuration={"lines": n + 2, "prints": 1},
        )
        for n in range(2)
    ]
    runs = [flow.trigger_run() for flow in flows]
    return [
        wait_for(
            lambda run=run: DataFlowRun.objects.filter(pk=run.pk, status=RunStatus.SUCCESS).first(),
            what=f"run {run.pk} to succeed\n{worker.log()}",
        )
        for run in runs
    ]


def assert_own_lines(runs: list[DataFlowRun]) -> None:
    for n, run in enumerate(runs):
        kept = list(run.logs.values_list("logger", "message"))
        own = f"django_dataflows.flow.talker-{n}"
        assert kept == [(own, f"line {i}") for i in range(n + 2)] + [("stdout", "printed 0")]
        assert run.cpu_time_ms is not None
        assert run.db_queries is not None


@pytest.mark.redis
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_celery_worker_keeps_each_runs_own_log(pool, workdir, settings):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "BACKEND": CELERY}
    with celery(pool, workdir) as worker:
        runs = run_two_flows(worker)

    assert_own_lines(runs)


def test_a_django_tasks_worker_keeps_each_runs_own_log(workdir, settings):
    if find_spec("django_tasks_db") is None:
        skip_or_fail('needs django-tasks-db: pip install -e ".[tasks]"')
    settings.DATAFLOWS = {**settings.DATAFLOWS, "BACKEND": TASKS}
    with tasks_db_worker("logs-tasks", ["default"], workdir / "tasks.log", **_env()) as worker:
        runs = run_two_flows(worker)

    assert_own_lines(runs)
