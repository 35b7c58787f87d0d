"""History at any size: every page and statistic at N runs, for several N, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_history_bench \\
        python bench/history.py --sizes 100000 1000000

For each size, fills the tables with SQL (``generate_series``): runs over ``--flows`` flows
(flow 1 is busy: 5 % of all runs) created over 30 days, a realistic mix of statuses,
lognormal durations, 10 % of runs with three steps, 0.5 % soft-deleted; the rollups are
rebuilt and folded with ``dataflows_rollups``' code (timed). Then prints, median of
``--repeat`` rounds with query counts: the admin's run list (first page and page 1,000), flow list,
busy flow's page and dashboard; the API's ``runs/`` first page and a page in the middle
of the table (by cursor); ``stats()`` of the whole table, of the busy flow and of the last
24 hours, every flow's of the last 7 days, and a metrics scrape, with p50/p95 beside
``percentile_cont`` over the same runs; the heartbeat's fold after 100 runs; the run table's
indexes (count, size) with and without the indexes this issue dropped, and the cost of
1,000 heartbeat inserts and worker finishes with each; finally ``dataflows_prune`` of the
runs older than 20 days while a writer inserts and finishes a run every 0.1 s (its longest
wait), beside a hand-written batched ``DELETE`` of the next 5 days. Then the ratio of the
largest size to the smallest. Figures are printed with the load average, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_history_bench")

from django.contrib.auth import get_user_model  # noqa: E402
from django.core import signing  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.db.models.functions import Now  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402
from django.urls import reverse  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIRequestFactory  # noqa: E402

from django_dataflows.api.pagination import CURSOR_SALT, _fingerprint  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun  # noqa: E402
from django_dataflows.rollups import fold_rollups, rebuild_rollups  # noqa: E402

FLOWS = "dataflows_dataflow"
RUNS = "dataflows_dataflowrun"
STEPS = "dataflows_dataflowrunstep"
ROLLUP_TABLES = (
    "dataflows_runrollup",
    "dataflows_rundurationbucket",
    "dataflows_runrolluplevel",
    "dataflows_runbucketlevel",
)
CHUNK = 200_000
#: The indexes the run table had before statistics read rollups (dropped by 0008).
OLD_INDEXES = [
    f"CREATE INDEX bench_old_duration_idx ON {RUNS} (data_flow_id, duration_ms)",
    f"CREATE INDEX bench_old_created_idx ON {RUNS} "
    "(created_at, data_flow_id, status, duration_ms, deleted_at)",
    f"CREATE INDEX bench_old_flow_stat_idx ON {RUNS} "
    "(data_flow_id, status, duration_ms, deleted_at, created_at)",
    f"CREATE INDEX bench_old_rated_ms_idx ON {RUNS} (duration_ms) "
    "WHERE status IN ('success', 'failed', 'timed_out') AND duration_ms IS NOT NULL "
    "AND deleted_at IS NULL",
    f"CREATE INDEX bench_old_flow_fk_idx ON {RUNS} (data_flow_id)",
]
NEW_ONLY_INDEXES = (
    "dataflows_run_newest_idx",
    "dataflows_run_deleted_idx",
    "dataflows_run_failed_idx",
)


def fill(flows: int, runs: int) -> None:
    """``flows`` flows and ``runs`` finished runs over 30 days, then the rollups."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUNS}, {FLOWS} RESTART IDENTITY CASCADE")
        cursor.execute(f"TRUNCATE {', '.join(ROLLUP_TABLES)}")
        DataFlow.objects.bulk_create(
            DataFlow(name=f"flow-{i}", flow="tests.testapp.flows.CountRows", run_interval=300)
            for i in range(1, flows + 1)
        )
        cursor.execute(f"ALTER TABLE {RUNS} DISABLE TRIGGER USER")
        cursor.execute(f"ALTER TABLE {STEPS} DISABLE TRIGGER USER")
        for start in range(0, runs, CHUNK):
            stop = min(start + CHUNK, runs)
            cursor.execute(
                f"""INSERT INTO {RUNS} (data_flow_id, status, trigger, created_at, started_at,
                        ended_at, error_message, error_backtrace, result, attempt,
                        task_id, queue, input, progress, redeliveries, deleted_at, updated_at)
                    SELECT flow, status, 'schedule', created, created,
                        created + duration * interval '1 millisecond', '', '',
                        NULL, 1, md5(i::text), 'default', '{{}}', '{{}}', 0,
                        CASE WHEN i %% 200 = 7 THEN created END, created
                    FROM (
                        SELECT i,
                            CASE WHEN i %% 20 = 0 THEN 1 ELSE 2 + i %% (%(flows)s - 1) END AS flow,
                            now() - (%(runs)s - i) * interval '30 days' / %(runs)s AS created,
                            (CASE WHEN i %% 100 < 85 THEN 'success'
                                  WHEN i %% 100 < 93 THEN 'failed'
                                  WHEN i %% 100 < 95 THEN 'timed_out'
                                  ELSE 'cancelled' END) AS status,
                            -- lognormal: exp(mu + sigma * N(0, 1)), Box-Muller
                            GREATEST(1, exp(8 + 1.2 * sqrt(-2 * ln(1 - random()))
                                * cos(2 * pi() * random())))::bigint AS duration
                        FROM generate_series(%(start)s, %(stop)s) AS i
                    ) AS generated""",
                {"flows": flows, "runs": runs, "start": start + 1, "stop": stop},
            )
            say(f"  inserted {stop:,}/{runs:,} runs")
        cursor.execute(
            f"""INSERT INTO {STEPS} (run_id, position, name, status, started_at, ended_at,
                    result, error_message, updated_at)
                SELECT r.id, p, 'step ' || p, 'success', r.started_at,
                    r.started_at + (r.ended_at - r.started_at) / 3, NULL, '', r.updated_at
                FROM {RUNS} r CROSS JOIN generate_series(1, 3) AS p WHERE r.id % 10 = 3"""
        )
        cursor.execute(f"ALTER TABLE {RUNS} ENABLE TRIGGER USER")
        cursor.execute(f"ALTER TABLE {STEPS} ENABLE TRIGGER USER")
    started = time.perf_counter()
    rebuild_rollups(
        progress=lambda done, total: say(f"  rollups {done}/{total}") if done % 500 == 0 else None
    )
    say(f"  dataflows_rollups --rebuild: {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        for table in (FLOWS, RUNS, STEPS, *ROLLUP_TABLES):
            cursor.execute(f"VACUUM ANALYZE {table}")


def table_sizes(runs: int) -> None:
    """What each table costs per million runs: heap plus indexes (and TOAST)."""
    with connection.cursor() as cursor:
        for table in (RUNS, STEPS, *ROLLUP_TABLES):
            cursor.execute(
                "SELECT pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass), "
                "pg_total_relation_size(%s::regclass), "
                "(SELECT reltuples FROM pg_class WHERE oid = %s::regclass)",
                [table, table, table, table],
            )
            heap, indexes, total, rows = cursor.fetchone()
            say(
                f"  {table:<30} {max(rows, 0):>12,.0f} rows  heap {heap / 2**20:8.1f} MiB  "
                f"indexes {indexes / 2**20:8.1f} MiB  per million runs "
                f"{total / 2**20 * 1_000_000 / runs:8.1f} MiB"
            )


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, int, Any]:
    """Median milliseconds over ``repeat`` rounds (after one warm-up), queries, result."""
    result = function()
    times = []
    queries = 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            result = function()
            times.append((time.perf_counter() - started) * 1000)
        queries = len(captured)
    return statistics.median(times), queries, result


def page(client: Client, url: str, params: dict[str, Any] | None = None) -> Callable[[], Any]:
    def run() -> Any:
        response = client.get(url, params or {})
        assert response.status_code == 200, (url, response.status_code)
        return response

    return run


def scrape(client: Client) -> Any:
    with override_settings(DATAFLOWS={"HEARTBEAT_TOKEN": "bench-token"}):
        response = client.get("/dataflows/metrics/", HTTP_AUTHORIZATION="Bearer bench-token")
    assert response.status_code == 200, response.status_code
    return response


def fold_after_finishes(count: int) -> tuple[float, int]:
    """Milliseconds of the heartbeat's fold after ``count`` runs of as many flows finished."""
    write_cost(count)
    started = time.perf_counter()
    days = fold_rollups()
    return (time.perf_counter() - started) * 1000, days


def middle_cursor() -> str:
    """A cursor naming a run in the middle of the table, as a ``next`` link would."""
    middle = DataFlowRun.objects.not_deleted().order_by("-created_at", "-pk")[
        DataFlowRun.objects.count() // 2
    ]
    request = APIRequestFactory().get("/dataflows/api/runs/")
    from rest_framework.request import Request

    fingerprint = _fingerprint(Request(request), ("cursor", "page_size"))
    return signing.dumps(
        {"v": middle.created_at.isoformat(), "k": middle.pk, "b": False, "f": fingerprint},
        salt=CURSOR_SALT,
        compress=True,
    )


def exact_percentiles(where: str, params: list[Any]) -> tuple[float, float]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
                FROM {RUNS} WHERE deleted_at IS NULL AND duration_ms IS NOT NULL
                AND status IN ('success', 'failed', 'timed_out') AND {where}""",
            params,
        )
        p50, p95 = cursor.fetchone()
    return p50, p95


def index_figures() -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), coalesce(sum(pg_relation_size(indexrelid)), 0) "
            "FROM pg_index WHERE indrelid = %s::regclass",
            [RUNS],
        )
        count, size = cursor.fetchone()
    return int(count), int(size)


def write_cost(count: int) -> tuple[float, float]:
    """Milliseconds to insert ``count`` pending runs (heartbeat) and to finish them (worker)."""
    flow_ids = list(DataFlow.objects.order_by("pk").values_list("pk", flat=True)[:count])
    with connection.cursor() as cursor:
        started = time.perf_counter()
        for flow_id in flow_ids:
            cursor.execute(
                f"""INSERT INTO {RUNS} (data_flow_id, status, trigger, created_at, error_message,
                        error_backtrace, attempt, task_id, queue, input, progress, redeliveries,
                        updated_at, activated_at)
                    VALUES (%s, 'pending', 'schedule', now(), '', '', 1, md5(random()::text),
                        'default', '{{}}', '{{}}', 0, now(), now()) RETURNING id""",
                [flow_id],
            )
        inserted = (time.perf_counter() - started) * 1000
        cursor.execute(f"SELECT id FROM {RUNS} WHERE status = 'pending'")
        ids = [row[0] for row in cursor.fetchall()]
        started = time.perf_counter()
        for run_id in ids:
            cursor.execute(
                f"""UPDATE {RUNS} SET status = 'success', started_at = now(),
                        ended_at = now() + interval '5 milliseconds', updated_at = now()
                    WHERE id = %s AND status = 'pending'""",
                [run_id],
            )
        finished = (time.perf_counter() - started) * 1000
        cursor.execute(f"DELETE FROM {RUNS} WHERE id = ANY(%s)", [ids])
    return inserted, finished


class Writer(threading.Thread):
    """A heartbeat and a worker: insert a run and finish it every 0.1 s; the longest wait."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.longest = 0.0
        self.rounds = 0

    def run(self) -> None:
        flow = DataFlow.objects.order_by("-pk").first()
        assert flow is not None
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                run = DataFlowRun.objects.create(data_flow=flow, status="pending")
                DataFlowRun.objects.filter(pk=run.pk).update(
                    status="success",
                    started_at=Now(),
                    ended_at=Now(),
                )
                self.longest = max(self.longest, time.perf_counter() - started)
                self.rounds += 1
                self.stop.wait(0.1)
        finally:
            connections.close_all()


def filled(size: int) -> bool:
    """Whether the tables already hold a fill of ``size`` runs (``--reuse``)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {RUNS}")
        (count,) = cursor.fetchone()
    return bool(count == size)


def measure(
    size: int, flows: int, repeat: int, reuse: bool = False, pages_only: bool = False
) -> dict[str, tuple[float, int]]:
    say(f"\n== {size:,} runs over {flows:,} flows; load average {os.getloadavg()}")
    if reuse and filled(size):
        say("  reusing the fill already in the database")
    else:
        fill(flows, size)
    table_sizes(size)
    user_model = get_user_model()
    user, _created = user_model.objects.get_or_create(
        username="bench", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client()
    client.force_login(user)
    api = Client()
    api.force_login(user)
    since = timezone.now() - timedelta(hours=24)
    cursor = middle_cursor()
    rows: dict[str, tuple[float, int]] = {}
    checks = {
        "admin run list, first page": page(
            client, reverse("admin:dataflows_dataflowrun_changelist")
        ),
        "admin run list, page 1,000": page(
            client, reverse("admin:dataflows_dataflowrun_changelist"), {"p": min(1000, size // 200)}
        ),
        "admin flow list": page(client, reverse("admin:dataflows_dataflow_changelist")),
        "admin flow page, busy flow": page(
            client, reverse("admin:dataflows_dataflow_change", args=[1])
        ),
        "admin dashboard": page(client, reverse("admin:dataflows_dataflowrun_dashboard")),
        "GET runs/ first page": page(api, "/dataflows/api/runs/"),
        "GET runs/ middle page (cursor)": page(api, "/dataflows/api/runs/", {"cursor": cursor}),
        "stats(), whole table": lambda: DataFlowRun.objects.stats(),
        "stats(), busy flow": lambda: DataFlowRun.objects.filter(data_flow_id=1).stats(),
        "stats(since=24 h)": lambda: DataFlowRun.objects.stats(since=since),
        "stats_per_flow(since=7 days)": lambda: DataFlowRun.objects.stats_per_flow(
            since=since - timedelta(days=6)
        ),
        "metrics scrape": lambda: scrape(api),
    }
    results = {}
    for label, function in checks.items():
        milliseconds, queries, result = timed(function, repeat)
        rows[label] = (milliseconds, queries)
        results[label] = result
        say(f"  {label:<34} {milliseconds:9.1f} ms  {queries:>3} queries")
    for label, where, params in (
        ("stats(), whole table", "true", []),
        ("stats(), busy flow", "data_flow_id = %s", [1]),
    ):
        exact = exact_percentiles(where, params)
        got = (results[label]["p50_duration_ms"], results[label]["p95_duration_ms"])
        errors = [abs(g - e) / e * 100 for g, e in zip(got, exact, strict=True)]
        say(
            f"  {label}: p50 {got[0]:.0f} vs percentile_cont {exact[0]:.0f} ({errors[0]:.2f} %), "
            f"p95 {got[1]:.0f} vs {exact[1]:.0f} ({errors[1]:.2f} %)"
        )
    if pages_only:
        return rows

    milliseconds, _days = fold_after_finishes(100)
    say(f"  the heartbeat's fold after 100 runs of 100 flows finished: {milliseconds:.0f} ms")
    count, size_bytes = index_figures()
    inserted, finished = write_cost(1000)
    say(
        f"  run table indexes now: {count}, {size_bytes / 2**20:.1f} MiB; 1,000 inserts "
        f"{inserted:.0f} ms, 1,000 finishes (with rollup triggers) {finished:.0f} ms"
    )
    with connection.cursor() as cursor:
        for sql in OLD_INDEXES:
            cursor.execute(sql)
        for name in NEW_ONLY_INDEXES:
            cursor.execute(f"ALTER INDEX {name} RENAME TO {name}_parked")
        cursor.execute(f"ALTER TABLE {RUNS} DISABLE TRIGGER dataflows_run_rollup_insert")
        cursor.execute(f"ALTER TABLE {RUNS} DISABLE TRIGGER dataflows_run_rollup_update")
        for name in NEW_ONLY_INDEXES:
            cursor.execute(f"DROP INDEX {name}_parked")
    count_old, size_old = index_figures()
    inserted_old, finished_old = write_cost(1000)
    say(
        f"  run table indexes before: {count_old}, {size_old / 2**20:.1f} MiB; 1,000 inserts "
        f"{inserted_old:.0f} ms, 1,000 finishes (no triggers) {finished_old:.0f} ms"
    )
    with connection.cursor() as cursor:
        for sql in OLD_INDEXES:
            cursor.execute(f"DROP INDEX {sql.split()[2]}")
        cursor.execute(f"CREATE INDEX dataflows_run_newest_idx ON {RUNS} (created_at)")
        cursor.execute(
            f"CREATE INDEX dataflows_run_deleted_idx ON {RUNS} (deleted_at) "
            "WHERE deleted_at IS NOT NULL"
        )
        cursor.execute(
            f"CREATE INDEX dataflows_run_failed_idx ON {RUNS} (ended_at) "
            "WHERE status IN ('failed', 'timed_out')"
        )
        cursor.execute(f"ALTER TABLE {RUNS} ENABLE TRIGGER dataflows_run_rollup_insert")
        cursor.execute(f"ALTER TABLE {RUNS} ENABLE TRIGGER dataflows_run_rollup_update")
    # Measured again: the first round also warms the connection and the caches.
    inserted, finished = write_cost(1000)
    say(
        f"  run table indexes now, again: 1,000 inserts {inserted:.0f} ms, "
        f"1,000 finishes (with rollup triggers) {finished:.0f} ms"
    )

    before = DataFlowRun.objects.stats()
    writer = Writer()
    writer.start()
    out = StringIO()
    started = time.perf_counter()
    call_command("dataflows_prune", "--older-than", "20", stdout=out, stderr=StringIO())
    pruned_in = time.perf_counter() - started
    writer.stop.set()
    writer.join()
    after = DataFlowRun.objects.stats()
    say(
        f"  dataflows_prune --older-than 20: {out.getvalue().strip()} ({pruned_in:.1f} s); "
        f"writer's longest wait {writer.longest * 1000:.0f} ms over {writer.rounds} rounds; "
        f"statistics total before {before['total']:,}, after {after['total'] - writer.rounds:,}"
    )
    with connection.cursor() as cursor:
        cutoff = timezone.now() - timedelta(days=15)
        started = time.perf_counter()
        deleted = 0
        while True:
            cursor.execute(
                f"""WITH doomed AS (SELECT id FROM {RUNS} WHERE created_at < %s
                        AND status IN ('success', 'failed', 'cancelled', 'timed_out') LIMIT 1000),
                    steps AS (DELETE FROM {STEPS} WHERE run_id IN (SELECT id FROM doomed))
                    DELETE FROM {RUNS} WHERE id IN (SELECT id FROM doomed)""",
                [cutoff],
            )
            if not cursor.rowcount:
                break
            deleted += cursor.rowcount
        say(
            f"  hand-written batched DELETE of the next 5 days: {deleted:,} runs in "
            f"{time.perf_counter() - started:.1f} s"
        )
    say(f"  load average {os.getloadavg()}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--flows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep a fill of the same size already in the database instead of filling again",
    )
    parser.add_argument(
        "--pages-only",
        action="store_true",
        help="measure the pages and statistics only: no write costs, no prune (keeps the fill)",
    )
    options = parser.parse_args()
    base = connection.settings_dict["NAME"]
    tables = {}
    with override_settings(ALLOWED_HOSTS=["*"], DEBUG=False):
        for size in options.sizes:
            if options.reuse:
                # One database per size, so that each fill can be kept for the next round.
                connections.close_all()
                connection.settings_dict["NAME"] = f"{base}_{size}"
            ensure_database()
            tables[size] = measure(
                size, options.flows, options.repeat, options.reuse, options.pages_only
            )
    smallest, largest = min(tables), max(tables)
    say(f"\n| page or call | {smallest:,} runs | {largest:,} runs | ratio |")
    say("|---|---|---|---|")
    for label in tables[smallest]:
        small, large = tables[smallest][label], tables[largest][label]
        say(
            f"| {label} | {small[0]:.1f} ms ({small[1]} q) | {large[0]:.1f} ms ({large[1]} q) "
            f"| {large[0] / small[0]:.2f} |"
        )
    say(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
