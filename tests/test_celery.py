"""The Celery backend with real components: a Redis broker and Celery worker processes.

Tests marked ``postgres`` run flows in two worker subprocesses started once for this module
(``celery -A tests.celery_app worker``): "main" (solo pool) consumes ``default``, "second"
(prefork pool, which enforces time limits) consumes ``reports``. Both see the test database
through ``DATABASE_URL``, so these tests need PostgreSQL. Nobody consumes ``parked``: the
tests that look at messages, or run the task's code in this process, use it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from django_dataflows.backends.celery import (
    HARD_TIME_LIMIT_GRACE,
    MAX_RETRY_DELAY,
    CeleryBackend,
    execute_run,
    retry_delay,
)
from django_dataflows.exceptions import EnqueueFailed
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger
from django_dataflows.scheduling import run_heartbeat
from tests.async_tasks import mark
from tests.async_workers import (
    ROOT,
    WorkerProcess,
    celery_worker,
    wait_for,
    worker_database_url,
)
from tests.celery_app import BROKER_KEY_PREFIX
from tests.celery_app import app as celery_app
from tests.conftest import skip_or_fail
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

CELERY_BACKEND = "django_dataflows.backends.celery.CeleryBackend"
#: RETRY_BACKOFF of the worker processes: retries come after 0.25-0.5 s, then 0.5-1 s.
WORKER_RETRY_BACKOFF = 0.5
DEAD_BROKER_URL = "redis://127.0.0.1:1/5"


# -- fixtures ---------------------------------------------------------------------------


def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        skip_or_fail(f"needs Redis at {django_settings.CELERY_BROKER_URL}: {exc}")
    return client


@pytest.fixture(scope="module", autouse=True)
def _forget_the_sessions_broker_keys() -> Iterator[None]:
    # The key prefix is this session's (tests/celery_app.py) and only this module uses
    # Redis: once it is done, nothing of the session's is needed there any more.
    yield
    import redis

    try:
        client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL, socket_connect_timeout=2)
        for key in client.scan_iter(match=f"{BROKER_KEY_PREFIX}*"):
            client.delete(key)
    except redis.RedisError:
        pass


@pytest.fixture
def broker() -> Iterator[Any]:
    """The Redis broker; the ``parked`` queue is emptied afterwards."""
    client = redis_client()
    yield client
    client.delete(f"{BROKER_KEY_PREFIX}parked")


@pytest.fixture
def celery_backend(settings: Any) -> None:
    settings.DATAFLOWS = {**settings.DATAFLOWS, "BACKEND": CELERY_BACKEND}


class Workers:
    """The module's two worker processes."""

    def __init__(self, main: WorkerProcess, second: WorkerProcess) -> None:
        self.main = main
        self.second = second

    def logs(self) -> str:
        return f"--- main ---\n{self.main.log()}\n--- second ---\n{self.second.log()}"

    def drain(self, queue: str = "default") -> None:
        """Return once the worker of ``queue`` has handled every message sent to it before."""
        label = f"sentinel-{uuid.uuid4().hex}"
        mark.apply_async(args=(label,), queue=queue)
        wait_for(
            lambda: Record.objects.filter(label=label).exists(),
            what=f"the sentinel task\n{self.logs()}",
        )


@pytest.fixture(scope="module")
def workers(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    if connection.vendor != "postgresql":
        skip_or_fail("needs PostgreSQL: set DATABASE_URL=postgres://…")
    redis_client()  # skips (or fails) without Redis
    logs = tmp_path_factory.mktemp("celery-workers")
    env = {
        "DATABASE_URL": worker_database_url(),
        "DATAFLOWS_TEST_RETRY_BACKOFF": str(WORKER_RETRY_BACKOFF),
        "DATAFLOWS_TEST_RECORD_EVENTS": "1",
    }
    main = celery_worker("main", ["default"], logs / "main.log", **env)
    second = celery_worker("second", ["reports"], logs / "second.log", pool="prefork", **env)
    try:
        main.launch()
        second.launch()
        main.wait_ready()
        second.wait_ready()
        yield Workers(main, second)
    finally:
        main.stop()
        second.stop()


def wait_for_run(run: DataFlowRun, workers: Workers, *statuses: str) -> DataFlowRun:
    return wait_for(
        lambda: DataFlowRun.objects.filter(pk=run.pk, status__in=statuses).first(),
        what=f"run {run.pk} to be {'/'.join(statuses)}\n{workers.logs()}",
    )


def parked_messages(broker: Any) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in broker.lrange(f"{BROKER_KEY_PREFIX}parked", 0, -1)]


# -- system checks (no broker needed) ---------------------------------------------------


def test_the_check_passes_with_the_project_celery_app():
    assert CeleryBackend().check() == []


@pytest.mark.parametrize("reuse_max", [None, 0])
def test_the_check_warns_when_the_worker_would_reconnect_for_every_run(monkeypatch, reuse_max):
    monkeypatch.setitem(celery_app.conf, "CELERY_DB_REUSE_MAX", reuse_max)

    [warning] = CeleryBackend().check()

    assert warning.id == "dataflows.W101"
    assert "closes the database connection after every task" in warning.msg


def test_the_check_reports_a_missing_celery(monkeypatch):
    monkeypatch.setitem(sys.modules, "celery", None)

    assert [message.id for message in CeleryBackend().check()] == ["dataflows.E101"]


NO_CELERY_APP_SCRIPT = """
import django, json
django.setup()
from django_dataflows.backends.celery import CeleryBackend
from django_dataflows.models import DataFlow, DataFlowRun
report = {"check": [message.id for message in CeleryBackend().check()]}
try:
    CeleryBackend().enqueue(DataFlowRun(pk=1, data_flow=DataFlow(name="x")))
except Exception as exc:
    report["enqueue"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


def test_a_process_without_a_celery_app_is_reported_and_refused():
    # A project that never imports its Celery app (proj/__init__.py) would otherwise send
    # to Celery's made-up default broker, amqp://guest@localhost.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", NO_CELERY_APP_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    report = json.loads(completed.stdout)
    assert report["check"] == ["dataflows.E102"]
    assert report["enqueue"].startswith("DataFlowsImproperlyConfigured: No Celery app is set up")


# -- retry backoff ----------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0)])
def test_the_retry_delay_doubles_with_each_attempt_with_jitter(attempt, ceiling):
    delays = [retry_delay(attempt, backoff=2, timeout=3600) for _ in range(200)]

    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1


def test_the_retry_delay_is_capped_at_ten_minutes():
    delays = [retry_delay(20, backoff=2, timeout=100_000) for _ in range(50)]

    assert max(delays) <= MAX_RETRY_DELAY == 600
    assert min(delays) >= MAX_RETRY_DELAY / 2


def test_the_retry_delay_stays_under_half_the_flows_timeout():
    # A retry run waiting longer than its timeout would be reaped as never picked up.
    assert max(retry_delay(5, backoff=2, timeout=10) for _ in range(50)) <= 5


# -- broker down at enqueue (no broker needed: a dead port) -----------------------------


@pytest.fixture
def dead_broker(celery_backend: None) -> Iterator[Celery]:
    """Make this thread's Celery app one whose broker is down."""
    app = Celery("dataflows-tests-dead-broker", broker=DEAD_BROKER_URL, set_as_current=False)
    app.conf.broker_connection_timeout = 1
    app.conf.broker_transport_options = {"socket_connect_timeout": 1}
    app.set_current()
    yield app
    celery_app.set_current()


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_trigger_run_raises_and_the_run_is_failed(dead_broker):
    data_flow = DataFlowFactory()

    with pytest.raises(EnqueueFailed):
        data_flow.trigger_run()

    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.FAILED
    assert run.error_message.startswith("Could not enqueue the run: ")
    assert "127.0.0.1:1" in run.error_message or "Connection refused" in run.error_message
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_heartbeat_answers_503_and_the_flow_stays_due(dead_broker, client):
    data_flow = DataFlowFactory()

    response = client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 503
    body = response.json()
    assert body["flows_due"] == 1
    assert body["flows_triggered"] == 1
    assert body["enqueue_failures"] == 1
    assert body["flows_failed"] == 1
    assert DataFlowRun.objects.get().error_message.startswith("Could not enqueue the run: ")
    assert list(DataFlow.objects.due_to_run()) == [data_flow]


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_a_batch_stops_at_the_first_refusal(dead_broker, client):
    flows = [DataFlowFactory() for _ in range(3)]

    body = client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1").json()

    assert (body["flows_triggered"], body["enqueue_failures"]) == (3, 3)
    first, *rest = DataFlowRun.objects.order_by("pk")
    assert "not tried" not in first.error_message
    for run in rest:
        assert run.error_message.startswith(
            f"Could not enqueue the run: not tried, because the backend refused run {first.pk} "
            "of the same batch just before: "
        )
    assert set(DataFlow.objects.due_to_run()) == set(flows)  # every slot given back


@pytest.mark.django_db(transaction=True)
def test_a_retry_the_broker_refuses_is_recorded_failed(dead_broker):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.Explode", max_retries=3)
    run = data_flow.create_pending_run()

    with pytest.raises(ValueError, match="boom"):
        execute_run(run.pk)  # the task's code, on a worker whose broker just went away

    failed, retry = DataFlowRun.objects.order_by("pk")
    assert (failed.status, failed.error_message) == (RunStatus.FAILED, "boom")
    assert (retry.attempt, retry.trigger, retry.status) == (2, RunTrigger.RETRY, RunStatus.FAILED)
    assert retry.error_message.startswith("Could not enqueue the run: ")
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.FAILED


# -- what is sent (a real broker, no worker on the queue) -------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_right_after_enqueueing_the_flow_says_its_run_is_pending(celery_backend, broker):
    data_flow = DataFlowFactory(queue="parked")
    before = timezone.now()

    run = data_flow.trigger_run()

    assert (run.status, run.queue) == (RunStatus.PENDING, "parked")
    assert len(run.task_id) == 32
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.PENDING
    assert data_flow.last_run_at is not None
    assert data_flow.last_run_at >= before
    assert len(parked_messages(broker)) == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_message_names_the_flow_and_run_and_carries_the_time_limits(celery_backend, broker):
    data_flow = DataFlowFactory(name="nightly-export", queue="parked", timeout=90)

    run = data_flow.trigger_run()

    [message] = parked_messages(broker)
    headers = message["headers"]
    assert headers["task"] == "django_dataflows.run_data_flow"
    assert headers["id"] == run.task_id
    assert headers["dataflows_flow"] == "nightly-export"
    assert headers["dataflows_run_id"] == run.pk
    assert headers["dataflows_attempt"] == 1
    assert headers["timelimit"] == [90 + HARD_TIME_LIMIT_GRACE, 90]
    assert headers["eta"] is None
    assert message["properties"]["delivery_info"]["routing_key"] == "parked"


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_publishes_its_batch_on_one_producer(celery_backend, broker, monkeypatch):
    flows = [DataFlowFactory(name=f"batch-{i}", queue="parked") for i in range(3)]
    acquired = []
    acquire = celery_app.producer_pool.acquire

    def counting_acquire(*args: Any, **kwargs: Any) -> Any:
        acquired.append(1)
        return acquire(*args, **kwargs)

    monkeypatch.setattr(celery_app.producer_pool, "acquire", counting_acquire)

    result = run_heartbeat()

    assert (result.flows_triggered, result.enqueue_failures) == (3, 0)
    assert len(acquired) == 1
    sent = {message["headers"]["dataflows_flow"] for message in parked_messages(broker)}
    assert sent == {data_flow.name for data_flow in flows}


# -- the task's code, run in this process (no worker) -----------------------------------


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_failed_attempt_is_followed_by_a_retry_run_sent_with_a_countdown(settings, broker):
    settings.DATAFLOWS = {**settings.DATAFLOWS, "RETRY_BACKOFF": 4}
    data_flow = DataFlowFactory(flow="tests.testapp.flows.FailsUntilAttempt", queue="parked")
    run = data_flow.create_pending_run()

    with pytest.raises(ValueError, match="attempt 1 fails"):
        execute_run(run.pk)
    sent_by = timezone.now()

    failed, retry = DataFlowRun.objects.order_by("pk")
    assert (failed.status, failed.attempt, failed.error_message) == (
        RunStatus.FAILED,
        1,
        "attempt 1 fails",
    )
    assert (retry.status, retry.attempt, retry.trigger) == (RunStatus.PENDING, 2, RunTrigger.RETRY)
    assert len(retry.task_id) == 32
    [message] = parked_messages(broker)
    assert message["headers"]["id"] == retry.task_id
    assert message["headers"]["dataflows_attempt"] == 2
    # RETRY_BACKOFF 4: a countdown between 2 and 4 s, counted from when it was sent.
    eta = datetime.datetime.fromisoformat(message["headers"]["eta"])
    assert retry.created_at + datetime.timedelta(seconds=2) <= eta
    assert eta <= sent_by + datetime.timedelta(seconds=4)
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.PENDING


@pytest.mark.redis
@pytest.mark.parametrize(
    ("flow", "max_retries", "enabled", "status"),
    [
        pytest.param("tests.testapp.flows.Explode", 0, True, RunStatus.FAILED, id="last-attempt"),
        pytest.param(
            "tests.testapp.flows.RefuseForever", 3, True, RunStatus.FAILED, id="permanent"
        ),
        pytest.param("tests.testapp.flows.TimesOut", 3, True, RunStatus.TIMED_OUT, id="timed-out"),
        pytest.param("tests.testapp.flows.Explode", 3, False, RunStatus.FAILED, id="disabled"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_no_retry_after_the_last_attempt_a_permanent_error_a_timeout_or_disabling(
    broker, flow, max_retries, enabled, status
):
    data_flow = DataFlowFactory(flow=flow, max_retries=max_retries, enabled=enabled, queue="parked")
    run = data_flow.create_pending_run()

    with pytest.raises(Exception):  # noqa: B017, PT011 - the flow's own exception
        execute_run(run.pk)

    assert list(DataFlowRun.objects.values_list("status", flat=True)) == [status]
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == status
    assert parked_messages(broker) == []


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_lost_pool_process_fails_its_run_and_the_retry_policy_applies(broker):
    from django_dataflows.tasks import _record_lost_process, run_data_flow

    data_flow = DataFlowFactory(queue="parked", max_retries=1)
    run = data_flow.create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)

    # What Celery's main process sends when the pool process running the task died.
    _record_lost_process(
        sender=run_data_flow,
        exception=WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."),
        args=(run.pk,),
    )

    lost, retry = DataFlowRun.objects.order_by("pk")
    assert lost.status == RunStatus.FAILED
    assert lost.error_message == (
        "The worker process running the flow was lost: Worker exited prematurely: "
        "signal 9 (SIGKILL)."
    )
    assert (retry.attempt, retry.trigger, retry.status) == (2, RunTrigger.RETRY, RunStatus.PENDING)
    assert [m["headers"]["id"] for m in parked_messages(broker)] == [retry.task_id]


@pytest.mark.django_db(transaction=True)
def test_a_pool_process_killed_at_the_hard_time_limit_times_its_run_out(celery_backend):
    from django_dataflows.tasks import _record_lost_process, run_data_flow

    run = DataFlowFactory(max_retries=3).create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)

    _record_lost_process(sender=run_data_flow, exception=TimeLimitExceeded(90), args=(run.pk,))
    # Other failures, and other tasks, are the task's own business.
    _record_lost_process(sender=run_data_flow, exception=ValueError("x"), args=(run.pk,))
    _record_lost_process(sender=mark, exception=WorkerLostError("x"), args=(run.pk,))

    timed_out = DataFlowRun.objects.get()  # a timed-out run is not retried
    assert timed_out.status == RunStatus.TIMED_OUT
    assert timed_out.error_message.startswith(
        "The worker process running the flow was killed at its hard time limit: "
    )


@pytest.mark.django_db(transaction=True)
def test_a_second_delivery_of_a_finished_run_does_not_run_the_flow_again(caplog):
    caplog.set_level(logging.INFO, logger="django_dataflows")
    run = DataFlowFactory().create_pending_run()
    execute_run(run.pk)

    execute_run(run.pk)

    assert Record.objects.filter(run_id=run.pk).count() == 1
    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert "not pending: a duplicate or late message; ignored" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_message_for_a_deleted_run_is_dropped(caplog):
    run = DataFlowFactory().create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).delete()  # pruned, or deleted with its flow

    execute_run(run.pk)

    assert "does not exist" in caplog.text
    assert not Record.objects.exists()


# -- end to end: worker processes ------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_the_flow_and_records_success(workers, celery_backend):
    data_flow = DataFlowFactory(configuration={"label": "e2e"})

    run = data_flow.trigger_run()

    done = wait_for_run(run, workers, RunStatus.SUCCESS)
    assert done.result == {"rows": 1}
    assert done.started_at is not None
    assert done.duration is not None
    assert Record.objects.filter(label="e2e", run_id=run.pk).count() == 1
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.SUCCESS
    # The worker sent the run signals with the flow name, attempt and (at the end) duration;
    # run_finished goes out after the outcome's commit, so it may come a moment later.
    finished = f"run_finished:{data_flow.name}:1:success:timed"
    wait_for(
        lambda: Record.objects.filter(run_id=run.pk, label=finished).exists(),
        what=f"the run_finished signal\n{workers.logs()}",
    )
    events = set(Record.objects.filter(run_id=run.pk).values_list("label", flat=True))
    assert f"run_started:{data_flow.name}:1:in_progress:untimed" in events


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_hands_due_flows_to_the_workers(workers, celery_backend, client):
    data_flow = DataFlowFactory()

    response = client.post("/dataflows/heartbeat/", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response.json()["flows_triggered"] == 1
    run = data_flow.runs.get()
    assert run.trigger == RunTrigger.SCHEDULE
    wait_for_run(run, workers, RunStatus.SUCCESS)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_failure_is_recorded_with_its_backtrace(workers, celery_backend):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.Explode", configuration={"message": "no input"}, max_retries=0
    )

    run = data_flow.trigger_run()

    failed = wait_for_run(run, workers, RunStatus.FAILED)
    assert failed.error_message == "no input"
    assert "ValueError: no input" in failed.error_backtrace
    assert "tests/testapp/flows.py" in failed.error_backtrace
    workers.drain()
    assert data_flow.runs.count() == 1
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.FAILED


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_failed_attempts_are_retried_with_backoff_until_one_succeeds(workers, celery_backend):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.FailsUntilAttempt",
        configuration={"succeed_on": 3},
        max_retries=3,
    )

    data_flow.trigger_run(input={"batch": 7})

    wait_for(
        lambda: data_flow.runs.filter(status=RunStatus.SUCCESS).first(),
        what=f"a successful attempt\n{workers.logs()}",
    )
    runs = list(data_flow.runs.order_by("attempt"))
    assert [r.input for r in runs] == [{"batch": 7}] * 3  # every attempt gets the same input
    assert [(r.attempt, r.status, r.trigger) for r in runs] == [
        (1, RunStatus.FAILED, RunTrigger.MANUAL),
        (2, RunStatus.FAILED, RunTrigger.RETRY),
        (3, RunStatus.SUCCESS, RunTrigger.RETRY),
    ]
    assert [r.error_message for r in runs] == ["attempt 1 fails", "attempt 2 fails", ""]
    assert all("ValueError" in r.error_backtrace for r in runs[:2])
    assert runs[2].result == {"attempt": 3}
    # Each retry waited at least its minimum backoff (half of 0.5 s, then of 1 s).
    waits = [(r.started_at - r.created_at).total_seconds() for r in runs[1:]]
    assert waits[0] >= WORKER_RETRY_BACKOFF / 2 - 0.05
    assert waits[1] >= WORKER_RETRY_BACKOFF - 0.05
    assert Record.objects.filter(label="attempt").count() == 3
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.SUCCESS


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_last_failed_attempt_leaves_the_flow_failed(workers, celery_backend):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.FailsUntilAttempt",
        configuration={"succeed_on": 99},
        max_retries=1,
    )

    data_flow.trigger_run()

    wait_for(
        lambda: data_flow.runs.filter(attempt=2, status=RunStatus.FAILED).first(),
        what=f"the second attempt to fail\n{workers.logs()}",
    )
    workers.drain()
    statuses = list(data_flow.runs.order_by("attempt").values_list("attempt", "status"))
    assert statuses == [(1, RunStatus.FAILED), (2, RunStatus.FAILED)]
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.FAILED


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_permanent_error_is_not_retried(workers, celery_backend):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.RefuseForever", max_retries=3)

    run = data_flow.trigger_run()

    failed = wait_for_run(run, workers, RunStatus.FAILED)
    assert failed.error_message == "the input file is corrupt"
    workers.drain()
    assert data_flow.runs.count() == 1


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_flow_routed_to_a_queue_runs_on_the_worker_that_consumes_it(workers, celery_backend):
    routed = DataFlowFactory(flow="tests.testapp.flows.RecordsWorker", queue="reports")
    default = DataFlowFactory(flow="tests.testapp.flows.RecordsWorker")

    routed_run = routed.trigger_run()
    default_run = default.trigger_run()

    assert wait_for_run(routed_run, workers, RunStatus.SUCCESS).result == {"worker": "second"}
    assert wait_for_run(default_run, workers, RunStatus.SUCCESS).result == {"worker": "main"}
    assert routed_run.queue == "reports"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_message_delivered_twice_runs_the_flow_once(workers):
    run = DataFlowFactory(configuration={"label": "twice"}).create_pending_run()

    for _ in range(2):  # the same message (same task id, same headers) twice
        CeleryBackend().enqueue(run)
    workers.drain()

    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert Record.objects.filter(label="twice").count() == 1
    assert (
        f"Run {run.pk} of {run.data_flow.name!r} is success, not pending: a duplicate or late "
        "message; ignored." in workers.main.log()
    )


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_flow_past_its_timeout_is_stopped_by_the_soft_time_limit(workers, celery_backend):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.Sleeps", configuration={"seconds": 60}, timeout=1, queue="reports"
    )

    run = data_flow.trigger_run()

    timed_out = wait_for_run(run, workers, RunStatus.TIMED_OUT, RunStatus.FAILED)
    assert timed_out.status == RunStatus.TIMED_OUT
    assert "SoftTimeLimitExceeded" in timed_out.error_backtrace
    assert timed_out.duration is not None
    workers.drain("reports")
    assert data_flow.runs.count() == 1
    data_flow.refresh_from_db()
    assert data_flow.last_run_status == RunStatus.TIMED_OUT


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_run_paused_on_a_worker_resumes_there_without_running_its_done_step_again(
    workers, celery_backend
):
    from django_dataflows.executor import FlowExecutor

    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.ThreeSteps", configuration={"wait_in": "one"}
    )
    run = data_flow.trigger_run()
    wait_for(
        lambda: run.steps.filter(name="one", status="in_progress").exists(),
        what=f"step one to start on the worker\n{workers.logs()}",
    )

    FlowExecutor.pause(run)  # step one outlives the request; the next checkpoint pauses
    paused = wait_for_run(run, workers, RunStatus.PAUSED)
    assert list(paused.steps.values_list("name", "status")) == [
        ("one", "success"),
        ("two", "pending"),
        ("three", "pending"),
    ]

    FlowExecutor.resume(paused)

    done = wait_for_run(run, workers, RunStatus.SUCCESS)
    assert done.result == {"one": {"value": 42}, "two": 43, "three": "done"}
    ran = list(
        Record.objects.filter(run_id=run.pk, label__startswith="step:")
        .values_list("label", flat=True)
        .order_by("pk")
    )
    assert ran == ["step:one", "step:two", "step:three"]
    assert data_flow.runs.count() == 1
