"""Run control under real concurrency: threads with their own PostgreSQL connections.

Each race ends in one consistent state: a cancel racing a finish, two resumes at once, a
pause racing a cancel. Every change is a conditional update, so no party overwrites
another's outcome and no body runs twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from django_dataflows.exceptions import InvalidRunState, RunAlreadyActive
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from tests.async_workers import PATIENCE
from tests.factories import DataFlowFactory, DataFlowRunFactory
from tests.testapp.models import Record

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROUNDS = 12


def in_threads(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread, released together; return results or exceptions."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = [None] * len(calls)

    def body(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=PATIENCE)
            outcomes[index] = call()
        except BaseException as exc:
            outcomes[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    return outcomes


def fresh(run: DataFlowRun) -> DataFlowRun:
    return DataFlowRun.objects.get(pk=run.pk)


def executes(data_flow: DataFlow, run: DataFlowRun) -> Callable[[], Any]:
    return lambda: FlowExecutor.execute(DataFlow.objects.get(pk=data_flow.pk), run=fresh(run))


def after(seconds: float, call: Callable[[], Any]) -> Callable[[], Any]:
    def delayed() -> Any:
        time.sleep(seconds)
        return call()

    return delayed


def test_a_cancel_racing_a_finish_ends_in_one_consistent_state():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    seen: Counter[str] = Counter()
    for _ in range(ROUNDS):
        run = data_flow.create_pending_run()
        delay = random.uniform(0, 0.03)

        _result, cancelled = in_threads(
            executes(data_flow, run), after(delay, lambda run=run: FlowExecutor.cancel(fresh(run)))
        )

        run = fresh(run)
        steps_run = Record.objects.filter(run_id=run.pk).count()
        seen[run.status] += 1
        if isinstance(cancelled, InvalidRunState):  # the run had finished first
            assert (cancelled.status, run.status) == (RunStatus.SUCCESS, RunStatus.SUCCESS)
            assert run.cancel_requested_at is None
        else:
            assert isinstance(cancelled, DataFlowRun), cancelled
            assert run.cancel_requested_at is not None
            # Asked in time, the run stops at its next checkpoint; asked after the last
            # one, the body keeps its real outcome.
            assert run.status in (RunStatus.CANCELLED, RunStatus.SUCCESS)
        if run.status == RunStatus.CANCELLED:
            assert steps_run < 3
            assert set(run.steps.values_list("status", flat=True)) <= {"success", "skipped"}
        else:
            assert steps_run == 3
        data_flow.refresh_from_db()
        assert data_flow.last_run_status == run.status
        assert not DataFlowRun.objects.active().exists()


def test_two_resumes_at_once_run_the_rest_of_the_run_once():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.ThreeSteps",
        configuration={"request": "pause", "request_in": "one"},
    )
    FlowExecutor.execute(data_flow)
    run = DataFlowRun.objects.get()
    assert run.status == RunStatus.PAUSED
    data_flow.configuration = {}
    data_flow.save()

    outcomes = in_threads(*[lambda: FlowExecutor.resume(fresh(run)) for _ in range(4)])

    resumed = [outcome for outcome in outcomes if isinstance(outcome, DataFlowRun)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, InvalidRunState)]
    assert (len(resumed), len(refused)) == (1, 3), outcomes
    assert all(exc.action == "resume" for exc in refused)
    assert fresh(run).status == RunStatus.SUCCESS
    assert Counter(Record.objects.values_list("label", flat=True)) == {
        "step:one": 1,
        "step:two": 1,
        "step:three": 1,
    }


def test_a_pause_racing_a_cancel_always_ends_cancelled():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.LoopsUntilStopped")
    for _ in range(ROUNDS // 2):
        run = data_flow.create_pending_run()
        worker = threading.Thread(target=lambda run=run: _execute_and_close(data_flow, run))
        worker.start()
        _wait_until(lambda run=run: fresh(run).status == RunStatus.IN_PROGRESS)

        paused, cancelled = in_threads(
            lambda run=run: FlowExecutor.pause(fresh(run)),
            lambda run=run: FlowExecutor.cancel(fresh(run)),
        )
        worker.join(timeout=PATIENCE)
        assert not worker.is_alive()

        assert isinstance(cancelled, DataFlowRun), cancelled
        assert isinstance(paused, DataFlowRun | InvalidRunState), paused
        # Whichever came first, the cancel wins: at the checkpoint, or on the paused run.
        assert fresh(run).status == RunStatus.CANCELLED
        assert not DataFlowRun.objects.active().exists()


def _execute_and_close(data_flow: DataFlow, run: DataFlowRun) -> None:
    try:
        executes(data_flow, run)()
    finally:
        connection.close()


def _wait_until(condition: Callable[[], bool], seconds: float = PATIENCE) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_two_retries_at_once_start_one_new_run(dummy_backend):
    failed = DataFlowRunFactory(status=RunStatus.FAILED, input={"n": 1})

    outcomes = in_threads(*[lambda: FlowExecutor.retry(fresh(failed)) for _ in range(4)])

    started = [outcome for outcome in outcomes if isinstance(outcome, DataFlowRun)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, RunAlreadyActive)]
    assert (len(started), len(refused)) == (1, 3), outcomes
    new = DataFlowRun.objects.exclude(pk=failed.pk).get()
    assert (new.status, new.attempt, new.input) == (RunStatus.PENDING, 2, {"n": 1})
