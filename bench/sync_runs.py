"""Benchmark no-op runs with the in-process backend on PostgreSQL, one process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_sync python bench/sync_runs.py

Prints, as the median of ``--repeat`` rounds of N runs of ``tests.testapp.flows.NoOp``:

* **heartbeat**: N due flows, one ``run_heartbeat()`` with ``SyncBackend``: one claim,
  then every run executed in this process, as a worker would (``execute_queued``);
* **trigger_run**: ``data_flow.trigger_run()`` called N times (record the run, hand it to
  the backend, run it, reload it), as **Run now** does;
* the database's own rate of durable single-row commits, measured the same way, for
  scale: a run that commits its outcome durably cannot beat it;

and the SQL statements of one run on each path. psycopg may prepare statements, as on a
tuned worker (``OPTIONS["prepare_threshold"]`` 5); ``DATAFLOWS_TEST_PREPARE_THRESHOLD=``
(empty) measures Django's default, which never prepares.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_sync")

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from tests.testapp.models import Record  # noqa: E402

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402
from django_dataflows.scheduling import run_heartbeat  # noqa: E402


def build_flows(count: int) -> list[DataFlow]:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    return DataFlow.objects.bulk_create(
        DataFlow(name=f"sync-{i}", flow="tests.testapp.flows.NoOp", run_interval=86_400)
        for i in range(count)
    )


def make_all_due() -> None:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))


def heartbeat_round(flows: list[DataFlow]) -> float:
    make_all_due()
    started = time.perf_counter()
    result = run_heartbeat(source="bench")
    elapsed = time.perf_counter() - started
    assert result.flows_triggered == len(flows), result
    assert DataFlowRun.objects.filter(status=RunStatus.SUCCESS).count() == len(flows)
    return len(flows) / elapsed


def trigger_round(flows: list[DataFlow]) -> float:
    make_all_due()
    started = time.perf_counter()
    for data_flow in flows:
        data_flow.trigger_run()
    elapsed = time.perf_counter() - started
    assert DataFlowRun.objects.filter(status=RunStatus.SUCCESS).count() == len(flows)
    return len(flows) / elapsed


def commit_round(flows: list[DataFlow]) -> float:
    record = Record.objects.create(label="sync-bench")
    started = time.perf_counter()
    for _ in flows:
        Record.objects.filter(pk=record.pk).update(label="touched")
    elapsed = time.perf_counter() - started
    record.delete()
    return len(flows) / elapsed


def statements_of_one_run(flows: list[DataFlow]) -> tuple[int, int]:
    make_all_due()
    data_flow = flows[0]
    with CaptureQueriesContext(connection) as queries:
        data_flow.trigger_run()
    triggered = len(queries)
    DataFlowRun.objects.all().delete()
    DataFlow.objects.exclude(pk=data_flow.pk).update(next_run_at=timezone.now() + timedelta(1))
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=timezone.now())
    with CaptureQueriesContext(connection) as queries:
        run_heartbeat(source="bench")
    return triggered, len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs per round (N)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each kind")
    args = parser.parse_args()

    settings.DATAFLOWS = {
        "BACKEND": "django_dataflows.backends.sync.SyncBackend",
        "HEARTBEAT_BATCH_SIZE": args.runs,
    }
    ensure_database()
    threshold = connection.settings_dict["OPTIONS"].get("prepare_threshold")
    say(
        f"PostgreSQL {connection.cursor().connection.info.server_version}, {args.runs:,} runs, "
        f"prepare_threshold {threshold}; load average before: {os.getloadavg()}"
    )
    flows = build_flows(args.runs)
    kinds: dict[str, Callable[[list[DataFlow]], float]] = {
        "heartbeat": heartbeat_round,
        "trigger_run": trigger_round,
        "durable commits": commit_round,
    }
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(args.repeat):
        for kind, run_round in kinds.items():
            rates[kind].append(run_round(flows))
            say(f"  round {index + 1}/{args.repeat}, {kind}: {rates[kind][-1]:,.0f}/s")
    triggered, heartbeat = statements_of_one_run(flows)
    median = {kind: statistics.median(values) for kind, values in rates.items()}
    say(f"Medians of {args.repeat} rounds of {args.runs:,}:")
    say(f"  one heartbeat, runs executed in-process  {median['heartbeat']:7,.0f}/s")
    say(f"  trigger_run() one by one                 {median['trigger_run']:7,.0f}/s")
    say(f"  durable single-row commits (the floor)   {median['durable commits']:7,.0f}/s")
    say(f"  statements: trigger_run() of one run {triggered}; a heartbeat of one run {heartbeat}")
    say(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
