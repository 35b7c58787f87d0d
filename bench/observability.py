"""Benchmark run logs, the metrics scrape and the health check on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_obs \
        python bench/observability.py

Prints:

* sync runs per second (a heartbeat of N due flows, every run executed in this process) of
  ``tests.testapp.flows.Talks`` logging 0, 10 and 1,000 lines per run, and of the silent
  flow with the run-log hook taken out (what a run cost before run logs), with the
  writes (INSERT / UPDATE statements) of one run of each;
* a metrics scrape and a health check (median of ``--repeat``, and their queries) with
  ``--flows`` flows and ``--history`` runs, and again with a hundredth of the runs, to
  show the query count does not follow the history.

Figures only, never asserted; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from datetime import timedelta

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_obs")

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

import django_dataflows.executor as executor  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun, Heartbeat, RunStatus  # noqa: E402
from django_dataflows.scheduling import run_heartbeat  # noqa: E402


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def build_flows(count: int, configuration: dict[str, int]) -> None:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    DataFlow.objects.bulk_create(
        DataFlow(
            name=f"obs-{i}",
            flow="tests.testapp.flows.Talks",
            run_interval=86_400,
            configuration=configuration,
        )
        for i in range(count)
    )


def runs_per_second(count: int, repeat: int) -> list[float]:
    rates = []
    for _ in range(repeat):
        DataFlowRun.objects.all().delete()
        DataFlow.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))
        started = time.perf_counter()
        result = run_heartbeat(source="bench")
        rates.append(count / (time.perf_counter() - started))
        assert result.flows_triggered == count, result
    return rates


def writes_of_one_run() -> int:
    DataFlowRun.objects.all().delete()
    flow = DataFlow.objects.order_by("pk").first()
    assert flow is not None
    DataFlow.objects.exclude(pk=flow.pk).update(next_run_at=timezone.now() + timedelta(days=1))
    DataFlow.objects.filter(pk=flow.pk).update(next_run_at=timezone.now() - timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        run_heartbeat(source="bench")
    # The run's own writes: the heartbeat's claim and bookkeeping are the same in each case.
    return sum(
        1 for query in queries if query["sql"].lstrip().upper().startswith(("INSERT", "UPDATE"))
    )


def bench_runs(count: int, repeat: int) -> None:
    say(f"== sync runs of Talks, {count} per heartbeat, median of {repeat} ({load()})")
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        cases = [("no log hook (before)", {}, True)] + [
            (f"{lines} lines per run", {"lines": lines}, False) for lines in (0, 10, 1000)
        ]
        figures = []
        for label, configuration, unhooked in cases:
            build_flows(count, configuration)
            hook = executor.observe_run
            if unhooked:
                executor.observe_run = lambda run, session: contextlib.nullcontext()  # type: ignore[assignment]
            try:
                rate = statistics.median(runs_per_second(count, repeat))
                writes = writes_of_one_run()
            finally:
                executor.observe_run = hook
            figures.append((label, rate, writes))
    for label, rate, writes in figures:
        say(f"  {label:<22} {rate:8.1f} runs/s   {writes} writes in a heartbeat of one run")


def build_history(flows: int, runs: int) -> None:
    say(f"building {flows} flows and {runs:,} runs…")
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO dataflows_dataflow (name, description, flow, enabled, configuration,"
            " run_interval, cron, timezone, alert_after, alert_emails, consecutive_failures,"
            " queue, state, last_run_status, next_run_at, created_at, updated_at)"
            " SELECT 'hist-' || i, '', 'tests.testapp.flows.NoOp', true, '{}', 3600, '', '',"
            " CASE WHEN i %% 10 = 0 THEN 7200 END, '', 0, '', '{}', 'success',"
            " now() + interval '1 day', now() - interval '30 days', now()"
            " FROM generate_series(1, %s) i",
            [flows],
        )
        cursor.execute(
            "INSERT INTO dataflows_dataflowrun (data_flow_id, status, trigger, created_at,"
            " started_at, ended_at, duration_ms, error_message, error_backtrace, attempt,"
            " task_id, queue, input, progress, redeliveries, updated_at, cpu_time_ms, db_queries)"
            " SELECT f.id, CASE WHEN i %% 20 = 0 THEN 'failed' ELSE 'success' END, 'schedule',"
            " now() - (i || ' seconds')::interval, now() - (i || ' seconds')::interval,"
            " now() - (i || ' seconds')::interval + interval '2 seconds', 2000 + i %% 997, '', '',"
            " 1, md5(i::text), 'default', '{}', '{}', 0, now(), 5, 3"
            " FROM generate_series(1, %s) i"
            " JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM dataflows_dataflow) f"
            " ON f.n = i %% %s",
            [runs, flows],
        )
        cursor.execute("ANALYZE dataflows_dataflowrun")
        cursor.execute("ANALYZE dataflows_dataflow")
    Heartbeat.record(received_at=timezone.now(), source="bench", client="", result={})


def timed_get(client: Client, path: str, repeat: int, **headers: str) -> tuple[float, int, int]:
    timings = []
    queries = 0
    status = 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            timings.append(time.perf_counter() - started)
        queries, status = len(captured), response.status_code
    return statistics.median(timings) * 1000, queries, status


def bench_monitoring(flows: int, history: int, repeat: int) -> None:
    from django.conf import settings

    settings.DATAFLOWS = {"HEARTBEAT_TOKEN": "bench-token"}
    client = Client()
    for runs in (history // 100, history):
        build_history(flows, runs)
        say(f"== {flows} flows, {runs:,} runs, median of {repeat} ({load()})")
        for label, path in (
            ("metrics scrape", "/dataflows/metrics/"),
            ("health", "/dataflows/health/"),
        ):
            ms, queries, status = timed_get(
                client, path, repeat, Authorization="Bearer bench-token"
            )
            say(f"  {label:<15} {ms:8.1f} ms   {queries} queries   HTTP {status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per heartbeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--history", type=int, default=1_000_000)
    args = parser.parse_args()
    ensure_database()
    assert RunStatus.SUCCESS  # the models are loaded
    bench_runs(args.runs, args.repeat)
    bench_monitoring(args.flows, args.history, args.repeat)


if __name__ == "__main__":
    main()
