"""Exactly-once scheduling under real concurrency: many processes, one PostgreSQL."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from django_dataflows.schedules import next_slot_after
from django_dataflows.scheduling import run_heartbeat
from tests.async_workers import wait_for
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8
SECONDS = 6.0
FLOWS = 12


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def race(modes: list[str], folder: Path) -> Counter[str]:
    """Run one worker process per mode, released together once all have started; return
    their summed outcome counts."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "PYTHONPATH": str(ROOT),
        "DATAFLOWS_TEST_RACE_DIR": str(folder),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", mode, str(SECONDS)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    wait_for(
        lambda: (
            len(list(folder.glob("ready-*"))) == len(workers)
            or any(worker.poll() is not None for worker in workers)
        ),
        what="every race process to start",
    )
    (folder / "go").touch()
    outcomes: Counter[str] = Counter()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        outcomes.update(json.loads(out))
        assert "error" not in outcomes, err
        assert set(outcomes) <= {"200", "started", "already_active"}, (outcomes, err)
    return outcomes


def assert_each_run_ran_its_body_once() -> None:
    runs = DataFlowRun.objects.all()
    assert set(runs.values_list("status", flat=True)) == {RunStatus.SUCCESS}
    per_run = Counter(Record.objects.values_list("run_id", flat=True))
    assert set(per_run.values()) == {1}
    assert set(per_run) == set(runs.values_list("pk", flat=True))


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_many_processes_run_each_due_slot_exactly_once(tmp_path):
    start = timezone.now().replace(microsecond=0) + datetime.timedelta(seconds=2)
    flows = [DataFlowFactory(run_interval=1) for _ in range(FLOWS)]
    DataFlow.objects.update(next_run_at=start)

    outcomes = race(["heartbeat"] * PROCESSES, tmp_path)

    # Every call answered 200: no deadlock, no unique violation, no 500. (How many calls
    # fit in the race depends on the machine's load, so that is not asserted.)
    assert set(outcomes) == {"200"}, outcomes
    assert_each_run_ran_its_body_once()
    # No slot ran twice and none was lost: each flow's first run took the first slot, each
    # next run took exactly the slot its predecessor's claim scheduled (the next one, or,
    # if that claim came more than an interval late, the first one after it), and the
    # flow now waits for the slot its last claim scheduled.
    for data_flow in flows:
        runs = list(data_flow.runs.order_by("scheduled_for"))
        assert runs[0].scheduled_for == start
        for previous, run in itertools.pairwise(runs):
            expected = next_slot_after(previous.scheduled_for, 1, previous.created_at)
            assert run.scheduled_for == expected, (data_flow.name, previous, run)
        last = runs[-1]
        data_flow.refresh_from_db()
        assert data_flow.next_run_at == next_slot_after(last.scheduled_for, 1, last.created_at)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_manual_runs_racing_heartbeats_neither_deadlock_nor_run_twice(tmp_path):
    for _ in range(FLOWS):
        DataFlowFactory(run_interval=1)

    outcomes = race(["heartbeat"] * (PROCESSES // 2) + ["manual"] * (PROCESSES // 2), tmp_path)

    assert outcomes["200"] > 0
    assert outcomes["started"] > 0
    assert_each_run_ran_its_body_once()
    slots = DataFlowRun.objects.exclude(scheduled_for=None).values_list(
        "data_flow_id", "scheduled_for"
    )
    assert len(set(slots)) == len(slots)


@pytest.mark.django_db
def test_sequential_heartbeats_on_any_database_run_each_slot_once():
    # The heartbeats' clock is given, not read: however long each heartbeat takes, they
    # all fall in the slot that began 3.5 s before the first (a one-second interval), so
    # the assertion never depends on the machine's speed.
    data_flow = DataFlowFactory(run_interval=1)
    slot = timezone.now() - datetime.timedelta(seconds=3, microseconds=500_000)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)
    first = slot + datetime.timedelta(seconds=3, microseconds=500_000)
    moments = [first + datetime.timedelta(milliseconds=90 * i) for i in range(5)]

    for now in moments:
        run_heartbeat(now=now)
    # Put the flow back on a slot it already ran: the unique (flow, slot) still holds.
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)
    run_heartbeat(now=moments[-1])

    assert list(data_flow.runs.values_list("scheduled_for", flat=True)) == [slot]
    assert data_flow.runs.get().status == RunStatus.SUCCESS
