"""Benchmark run statistics and the run list on PostgreSQL against hand-written SQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_api_bench python bench/stats.py

Fills the run table with 1,000,000 runs over 1,000 flows (``--runs``, ``--flows``) with
``generate_series`` (a minute at most; skipped when the table already holds that many, unless
``--rebuild``): created over 30 days, 1 % soft-deleted, mostly successful, durations
skewed like real ones. Then measures, in the same run and on the same rows:

* ``stats()`` for one flow, for the last 24 hours, and for the whole table;
* the runs list endpoint, first page, filtered by flow and status (the DRF view, called
  with a request factory as a superuser, so authentication costs no query);

each beside one hand-written SQL statement (or, for the list, the statements the endpoint
needs: page, steps; it no longer counts) returning the same figures. Prints the median of
``--repeat`` rounds, the query counts and the ratios. Targets: one flow ≤ 5 ms, 24 h ≤ 50 ms, whole
table ≤ 200 ms, list page ≤ 10 ms and ≤ 4 queries. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_api_bench")

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIRequestFactory, force_authenticate  # noqa: E402

from django_dataflows.api.views import DataFlowRunViewSet  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun  # noqa: E402

FLOWS = "dataflows_dataflow"
RUNS = "dataflows_dataflowrun"
CHUNK = 100_000

#: What stats() computes, written by hand: one statement, FILTER and percentile_cont.
RAW_STATS = f"""
    SELECT count(*),
           count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'in_progress'),
           count(*) FILTER (WHERE status = 'paused'),
           count(*) FILTER (WHERE status = 'success'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'cancelled'),
           count(*) FILTER (WHERE status = 'timed_out'),
           avg(duration_ms) FILTER (WHERE rated),
           min(duration_ms) FILTER (WHERE rated),
           max(duration_ms) FILTER (WHERE rated),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE rated),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE rated)
    FROM (SELECT status, duration_ms,
                 status IN ('success', 'failed', 'timed_out') AND duration_ms IS NOT NULL AS rated
          FROM {RUNS} WHERE deleted_at IS NULL AND %s) AS runs
"""


def build(flows: int, runs: int) -> None:
    """``flows`` flows and ``runs`` finished runs spread over them and over 30 days."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUNS}, {FLOWS} RESTART IDENTITY CASCADE")
        # Through the ORM: a thousand rows, and every column keeps its default.
        DataFlow.objects.bulk_create(
            DataFlow(name=f"flow-{i}", flow="tests.testapp.flows.CountRows", run_interval=3600)
            for i in range(1, flows + 1)
        )
        for start in range(0, runs, CHUNK):
            stop = min(start + CHUNK, runs)
            # i counts from the oldest run; the newest ends now. The status mix and the
            # durations (skewed: most runs short, a long tail) come from i and random().
            cursor.execute(
                f"""INSERT INTO {RUNS} (data_flow_id, status, trigger, created_at, started_at,
                        ended_at, error_message, error_backtrace, result, attempt,
                        task_id, queue, input, progress, redeliveries, deleted_at, updated_at)
                    SELECT 1 + i %% %(flows)s, status, 'schedule', created, created,
                        created + duration * interval '1 millisecond', '', '',
                        NULL, 1, md5(i::text), 'default', '{{}}', '{{}}', 0,
                        CASE WHEN i / %(flows)s %% 100 = 7 THEN created END, created
                    FROM (
                        SELECT i,
                            now() - (%(runs)s - i) * interval '30 days' / %(runs)s AS created,
                            (CASE WHEN i / %(flows)s %% 100 < 85 THEN 'success'
                                  WHEN i / %(flows)s %% 100 < 93 THEN 'failed'
                                  WHEN i / %(flows)s %% 100 < 95 THEN 'timed_out'
                                  ELSE 'cancelled' END) AS status,
                            (50 + 600000 * random() * random() * random())::bigint AS duration
                        FROM generate_series(%(start)s, %(stop)s) AS i
                    ) AS generated""",
                {"flows": flows, "runs": runs, "start": start + 1, "stop": stop},
            )
            say(f"  inserted {stop:,}/{runs:,} runs")
        say("  VACUUM ANALYZE…")
        cursor.execute(f"VACUUM ANALYZE {FLOWS}")
        cursor.execute(f"VACUUM ANALYZE {RUNS}")


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, int, Any]:
    """Median milliseconds over ``repeat`` rounds (after one warm-up), queries, result."""
    result = function()
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            result = function()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(queries), result


def raw(sql: str, params: list[Any]) -> Callable[[], Any]:
    def run() -> Any:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    return run


def list_page(flow_id: int) -> Callable[[], Any]:
    factory = APIRequestFactory()
    user = get_user_model()(username="bench", is_superuser=True, is_staff=True, is_active=True)
    view = DataFlowRunViewSet.as_view({"get": "list"})

    def run() -> Any:
        request = factory.get("/runs/", {"flow": flow_id, "status": "success,failed"})
        force_authenticate(request, user=user)
        response = view(request)
        assert response.status_code == 200, response.data
        return len(response.data["results"])

    return run


RAW_LIST = [
    f"""SELECT r.*, f.name FROM {RUNS} r JOIN {FLOWS} f ON f.id = r.data_flow_id
        WHERE r.data_flow_id = %s AND r.status IN ('success', 'failed') AND r.deleted_at IS NULL
        ORDER BY r.created_at DESC, r.id DESC LIMIT 50""",
    "SELECT * FROM dataflows_dataflowrunstep WHERE run_id = ANY(%s) ORDER BY run_id, position",
]


def raw_list(flow_id: int) -> Callable[[], Any]:
    def run() -> Any:
        with connection.cursor() as cursor:
            cursor.execute(RAW_LIST[0], [flow_id])
            ids = [row[0] for row in cursor.fetchall()]
            cursor.execute(RAW_LIST[1], [ids])
            cursor.fetchall()
        return len(ids)

    return run


def report(
    label: str, target: str, orm: tuple[float, int, Any], hand: tuple[float, int, Any]
) -> None:
    say(
        f"{label:<28} ORM {orm[0]:8.2f} ms {orm[1]:>2} quer{'y' if orm[1] == 1 else 'ies'}   "
        f"hand-written {hand[0]:8.2f} ms {hand[1]:>2}   ratio {orm[0] / hand[0]:5.2f}x   "
        f"(target {target})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true")
    options = parser.parse_args()

    ensure_database()
    if options.rebuild or DataFlowRun.objects.count() != options.runs:
        say(f"Building {options.runs:,} runs over {options.flows:,} flows…")
        build(options.flows, options.runs)
    flow_id = options.flows // 2
    since = timezone.now() - timedelta(hours=24)
    repeat = options.repeat
    say(f"PostgreSQL, {options.runs:,} runs, {options.flows:,} flows; median of {repeat} rounds")

    one_flow = (
        timed(lambda: DataFlowRun.objects.filter(data_flow_id=flow_id).stats(), repeat),
        timed(raw(RAW_STATS % "data_flow_id = %s", [flow_id]), repeat),
    )
    report("stats(), one flow", "≤ 5 ms", *one_flow)
    last_day = (
        timed(lambda: DataFlowRun.objects.stats(since=since), repeat),
        timed(raw(RAW_STATS % "created_at >= %s", [since]), repeat),
    )
    report("stats(), last 24 hours", "≤ 50 ms", *last_day)
    whole = (
        timed(lambda: DataFlowRun.objects.stats(), max(3, repeat // 2)),
        timed(raw(RAW_STATS % "true", []), max(3, repeat // 2)),
    )
    report("stats(), whole table", "≤ 200 ms", *whole)
    listing = (timed(list_page(flow_id), repeat), timed(raw_list(flow_id), repeat))
    report("runs list, flow + status", "≤ 10 ms, ≤ 4 queries", *listing)

    # The same figures both ways, or the comparison means nothing.
    orm_whole, raw_whole = whole[0][2], whole[1][2][0]
    assert orm_whole["total"] == raw_whole[0], (orm_whole, raw_whole)
    # From the rollups' histogram: within 1 % of percentile_cont.
    assert abs(orm_whole["p95_duration_ms"] - raw_whole[12]) <= 0.01 * raw_whole[12]
    assert listing[0][2] == listing[1][2]
    rate = orm_whole["success_rate"]
    say(
        f"whole table: {orm_whole['total']:,} runs, success rate {rate}%, "
        f"p50 {orm_whole['p50_duration_ms']:.0f} ms, p95 {orm_whole['p95_duration_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
