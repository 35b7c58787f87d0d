"""Nothing lost: every claimed slot runs once, or is recorded with its real reason.

One test per fault (see "What survives a fault" in the docs), each with real processes on
PostgreSQL: a gunicorn server (``tests.wsgi``), Celery workers, and a ``redis-server`` of
our own on a spare port. The test causes the fault (``kill -9``, ``SIGSTOP``,
``sys.exit``, ``pg_terminate_backend``) and then asserts the end state of every slot the
heartbeat claimed. Timeouts are set small (``PICKUP_TIMEOUT`` 1 s, flow timeouts of a few
seconds), and every wait is bounded.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from tests.async_workers import (
    PATIENCE,
    WorkerProcess,
    celery_worker,
    wait_for,
    worker_database_url,
)
from tests.conftest import skip_or_fail
from tests.factories import DataFlowFactory
from tests.faults import Answer, AppServer, RedisServer
from tests.testapp.models import Record

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CELERY = "django_dataflows.backends.celery.CeleryBackend"
#: Seconds a pending run may wait for a worker in these tests before it is handed over again.
PICKUP = 1
EXITED = (
    "SystemExit({}): the flow called sys.exit(), or its process was told to exit while the "
    "flow ran."
)


# -- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Everything a test started, stopped at the end whatever happened."""
    started: list[Any] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def redis_server(tmp_path: Path, processes: list[Any]) -> RedisServer:
    try:
        server = RedisServer(tmp_path)
        server.start()
    except RuntimeError as exc:
        skip_or_fail(str(exc))
    processes.append(server)
    return server


Serve = Callable[..., AppServer]


@pytest.fixture
def serve(tmp_path: Path, processes: list[Any]) -> Serve:
    """Start a gunicorn server with ``settings`` merged into DATAFLOWS."""

    def start(
        settings: dict[str, Any] | None = None,
        *,
        workers: int = 1,
        timeout: int = 30,
        **env: str,
    ) -> AppServer:
        env = {
            "DATABASE_URL": worker_database_url(),
            "DATAFLOWS_TEST_BROKER_PREFIX": "faults:",
            **env,
        }
        server = AppServer(
            tmp_path / f"gunicorn-{len(processes)}.log",
            workers=workers,
            timeout=timeout,
            settings={"PICKUP_TIMEOUT": PICKUP, **(settings or {})},
            env=env,
        )
        processes.append(server)
        server.start()
        return server

    return start


def start_celery_worker(
    tmp_path: Path, processes: list[Any], redis: RedisServer, *, pool: str = "solo"
) -> WorkerProcess:
    worker = celery_worker(
        f"faults-{pool}",
        ["default"],
        tmp_path / f"celery-{pool}.log",
        pool=pool,
        DATABASE_URL=worker_database_url(),
        DATAFLOWS_TEST_BROKER_URL=redis.url,
        DATAFLOWS_TEST_BROKER_PREFIX="faults:",
        DATAFLOWS_TEST_RETRY_BACKOFF="0.2",
    )
    processes.append(worker)
    worker.start()
    return worker


def db_now() -> datetime.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now: datetime.datetime = cursor.fetchone()[0]
    return now


def due_flows(*specs: dict[str, Any]) -> list[DataFlow]:
    """Create due flows, claimed in the order given (each a minute overdue, a ms apart)."""
    first = db_now() - datetime.timedelta(minutes=1)
    flows = []
    for index, spec in enumerate(specs):
        data_flow = DataFlowFactory(**spec)
        if data_flow.flow == "tests.testapp.flows.CountRows":
            data_flow.configuration = {"label": data_flow.name}
            data_flow.save()
        slot = first + datetime.timedelta(milliseconds=index)
        DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)
        data_flow.next_run_at = slot
        flows.append(data_flow)
    return flows


def counting(count: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"flow": "tests.testapp.flows.CountRows", **fields} for _ in range(count)]


def beat_until(
    server: AppServer, done: Callable[[], bool], *, timeout: float = PATIENCE, what: str = ""
) -> list[Answer]:
    """Call the heartbeat every 0.3 s until ``done()``; return the answers."""
    answers: list[Answer] = []

    def probe() -> bool:
        answers.append(server.heartbeat())
        if done():
            return True
        time.sleep(0.3)
        return False

    wait_for(probe, timeout=timeout, interval=0, what=f"{what}\n{server.log()[-3000:]}")
    return answers


def all_settled(flows: list[DataFlow]) -> Callable[[], bool]:
    """No flow has an active run, and each has a finished run for its first slot."""

    def settled() -> bool:
        if DataFlowRun.objects.filter(data_flow__in=flows).active().exists():
            return False
        slots = set(
            DataFlowRun.objects.filter(data_flow__in=flows)
            .exclude(scheduled_for=None)
            .values_list("data_flow_id", "scheduled_for")
        )
        return all((flow.pk, flow.next_run_at) in slots for flow in flows)

    return settled


def assert_each_slot_ran_once(flows: list[DataFlow]) -> None:
    """Each flow's claimed slot has one successful run whose body ran once.

    Any other run of the flow was refused by the broker, and says so: its slot was given
    back (``scheduled_for`` is empty) and the flow claimed it again.
    """
    for data_flow in flows:
        slot_run = DataFlowRun.objects.get(data_flow=data_flow, scheduled_for=data_flow.next_run_at)
        assert slot_run.status == RunStatus.SUCCESS, (data_flow.name, slot_run.error_message)
        assert Record.objects.filter(label=data_flow.name).count() == 1, data_flow.name
        for other in data_flow.runs.exclude(pk=slot_run.pk):
            assert (other.status, other.scheduled_for) == (RunStatus.FAILED, None)
            assert other.error_message.startswith("Could not enqueue the run: "), other


def in_background(call: Callable[[], Answer]) -> Callable[[], Answer]:
    """Start ``call`` in a thread; return a function that waits for its answer."""
    box: list[Answer] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()

    def join(timeout: float = 60.0) -> Answer:
        thread.join(timeout)
        assert box, "the heartbeat request did not finish"
        return box[0]

    return join


# -- the broker dies or freezes in the middle of a batch (Celery) ------------------------


def test_a_broker_killed_mid_batch_and_restarted_empty_loses_no_slot(
    redis_server, serve, tmp_path, processes
):
    flows = due_flows(*counting(30))
    server = serve(
        {"BACKEND": CELERY},
        DATAFLOWS_TEST_BROKER_URL=redis_server.url,
        # kill -9 the broker just before the 11th run is published: 10 runs are in Redis.
        DATAFLOWS_TEST_PUBLISH_FAULT=f"SIGKILL:{redis_server.pid}:11",
    )

    answer = server.heartbeat()

    assert (answer.status, answer.content_type) == (503, "application/json")
    assert answer.json()["flows_triggered"] == 30
    assert answer.json()["enqueue_failures"] == 20  # the 11th failed, the rest were not tried
    pending = DataFlowRun.objects.filter(status=RunStatus.PENDING)
    assert pending.count() == 10  # published, then lost with the broker
    lost = set(pending.values_list("pk", flat=True))
    redis_server.kill()
    redis_server.start()  # restarted empty
    start_celery_worker(tmp_path, processes, redis_server)

    beat_until(server, all_settled(flows), what="every slot to run")

    assert_each_slot_ran_once(flows)
    redelivered = DataFlowRun.objects.filter(pk__in=lost)
    assert set(redelivered.values_list("status", "redeliveries")) == {(RunStatus.SUCCESS, 1)}


def test_a_frozen_broker_ends_the_batch_within_the_servers_timeout(
    redis_server, serve, tmp_path, processes
):
    flows = due_flows(*counting(10))
    server = serve(
        {"BACKEND": CELERY},
        # Each publish to the frozen broker gives up after 1 s; the old way (every flow
        # tried in turn) would hold the request past gunicorn's 8 s and lose it to a kill.
        timeout=8,
        DATAFLOWS_TEST_BROKER_URL=redis_server.url,
        DATAFLOWS_TEST_BROKER_SOCKET_TIMEOUT="1",
        DATAFLOWS_TEST_PUBLISH_FAULT=f"SIGSTOP:{redis_server.pid}:4",
    )

    answer = server.heartbeat()

    assert (answer.status, answer.content_type) == (503, "application/json")
    assert answer.json()["enqueue_failures"] == 7
    assert DataFlowRun.objects.filter(status=RunStatus.PENDING).count() == 3
    redis_server.resume()
    start_celery_worker(tmp_path, processes, redis_server)

    beat_until(server, all_settled(flows), what="every slot to run")

    assert_each_slot_ran_once(flows)


# -- the process running a batch dies (sync backend) ----------------------------------------


@pytest.mark.parametrize("killer", ["kill -9", "gunicorn timeout"])
def test_a_server_killed_mid_batch_leaves_no_slot_behind(serve, killer):
    sleeper, *rest = due_flows(
        {"flow": "tests.testapp.flows.ReportsPidThenSleeps", "timeout": 2}, *counting(5)
    )
    server = serve(timeout=2 if killer == "gunicorn timeout" else 30)

    answer = in_background(server.heartbeat)
    record = wait_for(lambda: Record.objects.filter(label__startswith="pid:").first())
    if killer == "kill -9":
        os.kill(int(record.label.removeprefix("pid:")), signal.SIGKILL)
    if killer == "kill -9":
        assert answer().status == 0  # the connection dropped with the process
    else:  # gunicorn's SIGABRT is a SystemExit in the flow: the batch ends before SIGKILL
        assert answer().status in (0, 200)

    beat_until(server, all_settled([sleeper, *rest]), what="the batch's slots to settle")

    assert_each_slot_ran_once(rest)
    run = sleeper.runs.get()
    if killer == "kill -9":  # nothing was recorded: the run's timeout ends it
        assert run.status == RunStatus.TIMED_OUT
        assert "worker was probably lost" in run.error_message
    else:  # gunicorn aborts its worker with SystemExit(1): recorded at once
        assert (run.status, run.error_message) == (RunStatus.FAILED, EXITED.format(1))
    assert Record.objects.filter(run_id=run.pk).count() == 1  # never started again


@pytest.mark.parametrize("workers", [2])
def test_runs_waiting_their_turn_in_a_live_batch_are_never_reaped(serve, workers):
    # Five flows of 1 s with a 3 s timeout, run one after another by one heartbeat: the
    # last waits 4 s or more, longer than its timeout, while a second heartbeat reaps every
    # 0.3 s. Each run's own 1 s leaves 2 s to a loaded machine before its timeout or the
    # next renewal is missed (PICKUP_TIMEOUT 3 s), so only a real bug makes it fail.
    flows = due_flows(
        *[
            {"flow": "tests.testapp.flows.Sleeps", "configuration": {"seconds": 1}, "timeout": 3}
            for _ in range(5)
        ]
    )
    server = serve({"PICKUP_TIMEOUT": 3}, workers=workers)

    first = in_background(server.heartbeat)
    wait_for(lambda: DataFlowRun.objects.count() == 5, what="the first heartbeat's claim")
    others = beat_until(
        server,
        lambda: not DataFlowRun.objects.active().exists(),
        what="the batch to finish",
    )

    answer = first()
    assert (answer.status, answer.json()["flows_triggered"]) == (200, 5)
    assert all(other.status == 200 for other in others)
    assert sum(other.json()["runs_timed_out"] for other in others) == 0
    assert set(DataFlowRun.objects.values_list("status", "redeliveries")) == {
        (RunStatus.SUCCESS, 0)
    }
    assert {run.data_flow_id for run in DataFlowRun.objects.all()} == {f.pk for f in flows}


# -- the flow itself ends its process, breaks its result or its connection -----------------


def test_a_flow_that_calls_sys_exit_is_a_failed_run_and_the_heartbeat_goes_on(serve):
    before, exits, after = due_flows(
        *counting(1), {"flow": "tests.testapp.flows.Exits"}, *counting(1)
    )
    server = serve()

    answer = server.heartbeat()

    assert (answer.status, answer.content_type) == (200, "application/json")
    assert (answer.json()["flows_triggered"], answer.json()["flows_failed"]) == (3, 1)
    run = exits.runs.get()
    assert (run.status, run.error_message) == (RunStatus.FAILED, EXITED.format(3))
    assert_each_slot_ran_once([before, after])


def test_a_flow_interrupted_by_ctrl_c_is_recorded_and_the_next_heartbeat_runs_the_rest(serve):
    before, interrupted, after = due_flows(
        *counting(1), {"flow": "tests.testapp.flows.Interrupts"}, *counting(1)
    )
    server = serve()

    server.heartbeat()  # KeyboardInterrupt goes on up: gunicorn answers its own 500

    run = interrupted.runs.get()
    assert (run.status, run.error_message) == (RunStatus.FAILED, "KeyboardInterrupt")
    beat_until(server, all_settled([before, after]), what="the rest of the batch")
    assert_each_slot_ran_once([before, after])


def test_results_and_messages_the_database_refuses_are_recorded_as_failures(serve):
    nan, nul, nul_message, fine = due_flows(
        {"flow": "tests.testapp.flows.ReturnsNaN"},
        {"flow": "tests.testapp.flows.ReturnsNul"},
        {"flow": "tests.testapp.flows.FailsWithNul"},
        *counting(1),
    )
    server = serve()

    answer = server.heartbeat()

    assert (answer.status, answer.json()["flows_failed"]) == (200, 3)
    failed = {
        flow: flow.runs.get()
        for flow in (nan, nul, nul_message)
        if flow.runs.get().status == "failed"
    }
    assert failed[nan].error_message.startswith(
        "The flow returned a result that cannot be stored as JSON: "
    )
    assert "it holds NaN or an infinite number" in failed[nan].error_message
    assert "NUL character" in failed[nul].error_message
    assert failed[nul_message].error_message == "bad byte \\x00 in the input"
    assert_each_slot_ran_once([fine])


def test_a_flow_that_ends_its_own_database_connection_is_recorded_and_the_rest_run(serve):
    before, breaker, after = due_flows(
        *counting(1), {"flow": "tests.testapp.flows.EndsOwnConnection"}, *counting(1)
    )
    server = serve()

    answer = server.heartbeat()

    assert (answer.status, answer.json()["flows_failed"]) == (200, 1)
    run = breaker.runs.get()
    assert run.status == RunStatus.FAILED
    assert "terminating connection due to administrator command" in run.error_message
    assert_each_slot_ran_once([before, after])


# -- Celery: a pool process ends or is lost, and the retry policy still holds ---------------


def test_on_celery_a_flow_that_exits_is_retried_by_its_policy(
    redis_server, serve, tmp_path, processes
):
    start_celery_worker(tmp_path, processes, redis_server, pool="prefork")
    data_flow, *_ = due_flows(
        {"flow": "tests.testapp.flows.Exits", "configuration": {"succeed_on": 2}, "max_retries": 1}
    )
    server = serve({"BACKEND": CELERY}, DATAFLOWS_TEST_BROKER_URL=redis_server.url)

    assert server.heartbeat().status == 200

    wait_for(lambda: data_flow.runs.filter(status=RunStatus.SUCCESS).exists())
    runs = list(
        data_flow.runs.order_by("attempt").values_list("attempt", "status", "error_message")
    )
    assert runs == [
        (1, RunStatus.FAILED, EXITED.format(3)),
        (2, RunStatus.SUCCESS, ""),
    ]


def test_on_celery_a_lost_pool_process_is_recorded_and_retried(
    redis_server, serve, tmp_path, processes
):
    start_celery_worker(tmp_path, processes, redis_server, pool="prefork")
    data_flow, *_ = due_flows(
        {
            "flow": "tests.testapp.flows.ReportsPidThenSleeps",
            "configuration": {"succeed_on": 2},
            "max_retries": 1,
        }
    )
    server = serve({"BACKEND": CELERY}, DATAFLOWS_TEST_BROKER_URL=redis_server.url)
    assert server.heartbeat().status == 200

    record = wait_for(lambda: Record.objects.filter(label__startswith="pid:").first())
    os.kill(int(record.label.removeprefix("pid:")), signal.SIGKILL)

    wait_for(lambda: data_flow.runs.filter(status=RunStatus.SUCCESS).exists())
    lost, retry = data_flow.runs.order_by("attempt")
    assert lost.status == RunStatus.FAILED
    assert lost.error_message.startswith("The worker process running the flow was lost")
    assert (retry.attempt, retry.status) == (2, RunStatus.SUCCESS)


# -- the heartbeat's own errors are JSON -----------------------------------------------------


def test_with_the_database_unreachable_the_heartbeat_answers_503_json(serve):
    server = serve(DATABASE_URL="postgres://postgres@127.0.0.1:1/unreachable")

    answer = server.heartbeat()

    assert (answer.status, answer.content_type) == (503, "application/json")
    assert answer.json()["error"].startswith("The database is unavailable")


def test_a_malformed_allowlist_entry_answers_503_json_naming_the_setting(serve):
    server = serve({"HEARTBEAT_ALLOWED_IPS": ["10.0.0.1/8"]})

    answer = server.heartbeat()

    assert (answer.status, answer.content_type) == (503, "application/json")
    assert "DATAFLOWS['HEARTBEAT_ALLOWED_IPS']" in answer.json()["error"]
    assert "HEARTBEAT_ALLOWED_IPS" in server.log()
    assert not DataFlowRun.objects.exists()


# -- one clock: the database's ----------------------------------------------------------------


@pytest.mark.parametrize("shift", [600, -600])
def test_a_server_whose_clock_is_ten_minutes_off_claims_what_the_database_clock_says(serve, shift):
    now = db_now()
    due, soon = DataFlowFactory(), DataFlowFactory()
    DataFlow.objects.filter(pk=due.pk).update(next_run_at=now - datetime.timedelta(seconds=30))
    DataFlow.objects.filter(pk=soon.pk).update(next_run_at=now + datetime.timedelta(minutes=5))
    # A run in progress for 10 s, with a 5-minute timeout: not stuck, whatever the clock.
    working = DataFlowFactory(timeout=300)
    DataFlowRun.objects.create(
        data_flow=working,
        status=RunStatus.IN_PROGRESS,
        started_at=now - datetime.timedelta(seconds=10),
        activated_at=now - datetime.timedelta(seconds=10),
    )
    DataFlow.objects.filter(pk=working.pk).update(next_run_at=now + datetime.timedelta(hours=1))
    server = serve({"PICKUP_TIMEOUT": 300}, DATAFLOWS_TEST_CLOCK_SHIFT=str(shift))

    answer = server.heartbeat()

    assert answer.status == 200
    assert (answer.json()["flows_triggered"], answer.json()["runs_timed_out"]) == (1, 0)
    assert due.runs.get().status == RunStatus.SUCCESS
    assert not soon.runs.exists()
    due.refresh_from_db()
    # The next slot is one interval on from the claimed one, by the database's clock.
    assert due.next_run_at == now - datetime.timedelta(seconds=30) + datetime.timedelta(minutes=1)
