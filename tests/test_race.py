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
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 8
SECONDS = 6.0
FLOWS = 12


def database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_many_processes_run_each_due_slot_exactly_once():
    start = timezone.now().replace(microsecond=0) + datetime.timedelta(seconds=2)
    flows = [DataFlowFactory(run_interval=1) for _ in range(FLOWS)]
    DataFlow.objects.update(next_run_at=start)
    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONPATH": str(ROOT)}

    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_worker", str(SECONDS)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    statuses: Counter[str] = Counter()
    errors = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        statuses.update(json.loads(out))
        errors.append(err)
    end = timezone.now()

    # Every call answered 200: no deadlock, no unique violation, no 500.
    assert set(statuses) == {"200"}, (statuses, errors)
    assert statuses["200"] >= PROCESSES * 10

    runs = DataFlowRun.objects.order_by("data_flow_id", "scheduled_for")
    assert runs.count() > FLOWS
    # Each flow body ran exactly once per run, and every run succeeded.
    assert set(runs.values_list("status", flat=True)) == {RunStatus.SUCCESS}
    per_run = Counter(Record.objects.values_list("run_id", flat=True))
    assert set(per_run.values()) == {1}
    assert set(per_run) == set(runs.values_list("pk", flat=True))

    # No slot ran twice and none was lost: each flow's slots are consecutive seconds from
    # the first slot up to the last one that was due before the workers stopped.
    for data_flow in flows:
        slots = list(runs.filter(data_flow=data_flow).values_list("scheduled_for", flat=True))
        assert slots[0] == start
        gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(slots)}
        assert gaps == {1.0}, (data_flow.name, slots)
        assert slots[-1] >= end - datetime.timedelta(seconds=3)


@pytest.mark.django_db
def test_sequential_heartbeats_on_any_database_keep_one_run_per_slot():
    data_flow = DataFlowFactory(run_interval=3600)

    for _ in range(5):
        run_heartbeat()

    assert data_flow.runs.count() == 1
    assert data_flow.runs.get().scheduled_for is not None
