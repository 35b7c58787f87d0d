"""Benchmark the heartbeat claim on PostgreSQL against a hand-written raw-SQL claim.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench python bench/heartbeat.py

Builds tables of 100,000 and then 1,000,000 flows (``--sizes``), a quarter of them
(``--cron-share``) on cron schedules in several time zones and the rest on intervals, makes
1,000 (and 0) of them due, and measures, in the same run and on the same rows:

* the ORM claim + dispatch (``claim_due_flows`` + ``dispatch_many`` with the dummy
  backend) and the number of SQL statements it sends;
* a raw-SQL claim doing the same work (lock, skip busy flows, insert runs, advance
  schedules) in the fewest statements we could write by hand.

It prints the median of ``--repeat`` rounds and the ratios; targets: ORM ≤ 2x raw,
≤ 10 statements whatever the number due, 1M flows within 1.3x of 100k.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench")

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from raw import FLOWS, RUNS, raw_claim  # noqa: E402

from django_dataflows.backends import get_backend  # noqa: E402
from django_dataflows.runs.starting import dispatch_many  # noqa: E402
from django_dataflows.scheduling import claim_due_flows  # noqa: E402

#: The cron flows' expressions and zones (fixed and wildcard hours, several zones).
CRON_EXPRESSIONS = ["*/5 * * * *", "30 2 * * 1-5", "0 * * * *", "15 6 * * *", "@daily"]
CRON_ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Asia/Tokyo", ""]


def build_flows(count: int, cron_share: float) -> None:
    """Fill the flow table with ``count`` enabled flows, none due (in chunks, with progress).

    Every ``1 / cron_share``-th flow is a cron flow; the others run on intervals.
    """
    every = max(1, round(1 / cron_share)) if cron_share > 0 else 0
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUNS}, {FLOWS} RESTART IDENTITY CASCADE")
        chunk = 100_000
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            cursor.execute(
                f"""INSERT INTO {FLOWS} (name, description, flow, enabled, configuration,
                        run_interval, cron, timezone, queue, last_run_status, next_run_at,
                        created_at, updated_at, alert_emails, consecutive_failures, state)
                    SELECT 'flow-' || i, '', 'tests.testapp.flows.CountRows', true, '{{}}',
                        CASE WHEN is_cron THEN NULL ELSE 60 + i %% 3600 END,
                        CASE WHEN is_cron THEN (%s::text[])[1 + (i / %s) %% %s] ELSE '' END,
                        CASE WHEN is_cron THEN (%s::text[])[1 + i %% %s] ELSE '' END,
                        '', '', now() + interval '1 day', now(), now(), '', 0, '{{}}'
                    FROM generate_series(%s, %s) AS i,
                         LATERAL (SELECT %s > 0 AND i %% GREATEST(%s, 1) = 0) AS kind(is_cron)""",
                [
                    CRON_EXPRESSIONS,
                    max(every, 1),
                    len(CRON_EXPRESSIONS),
                    CRON_ZONES,
                    len(CRON_ZONES),
                    start + 1,
                    stop,
                    every,
                    every,
                ],
            )
            say(f"  inserted {stop:,}/{count:,} flows")
        cursor.execute(f"VACUUM ANALYZE {FLOWS}")


def make_due(count: int) -> None:
    """Reset every flow to not due, clear runs, then make ``count`` spread-out flows due."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUNS} CASCADE")
        cursor.execute(
            f"UPDATE {FLOWS} SET next_run_at = now() + interval '1 day' "
            "WHERE next_run_at <= now() + interval '1 hour'"
        )
        if count:
            cursor.execute(
                f"""UPDATE {FLOWS} SET next_run_at = now() - (id %% 300) * interval '1 second'
                    WHERE id IN (SELECT id FROM {FLOWS} ORDER BY id
                                 LIMIT %s OFFSET (SELECT count(*) / 2 FROM {FLOWS}))""",
                [count],
            )
        cursor.execute(f"ANALYZE {FLOWS}")


def orm_claim(batch: int) -> int:
    with transaction.atomic():
        claim = claim_due_flows(batch_size=batch)
    dispatch_many(claim.runs)
    return len(claim.runs)


def measure(label: str, claim: Callable[[int], int], due: int, repeat: int) -> tuple[float, int]:
    times, statements = [], 0
    for _ in range(repeat):
        make_due(due)
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            claimed = claim(max(due, 1))
            times.append(time.perf_counter() - started)
        statements = len(queries)
        assert claimed == due, (label, claimed, due)
    return statistics.median(times), statements


def measure_overdue(repeat: int) -> tuple[float, int]:
    """The heartbeat's other per-call query: overdue flows (none watched here)."""
    from django.utils import timezone

    from django_dataflows.scheduling import announce_overdue_flows

    times, statements = [], 0
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            announce_overdue_flows(timezone.now())
            times.append(time.perf_counter() - started)
        statements = len(queries)
    return statistics.median(times), statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--due", type=int, nargs="+", default=[1000, 0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cron-share", type=float, default=0.25)
    args = parser.parse_args()

    settings.DATAFLOWS = {"BACKEND": "django_dataflows.backends.dummy.DummyBackend"}
    ensure_database()
    backend = get_backend()
    say(
        f"PostgreSQL {connection.cursor().connection.info.server_version}, median of "
        f"{args.repeat}, {args.cron_share:.0%} cron flows; load average before: {os.getloadavg()}"
    )
    results: dict[tuple[int, int], float] = {}
    for size in args.sizes:
        say(f"Building {size:,} flows…")
        build_flows(size, args.cron_share)
        for due in args.due:
            orm, orm_statements = measure("orm", orm_claim, due, args.repeat)
            backend.clear()  # type: ignore[attr-defined]
            raw, raw_statements = measure("raw", lambda b: len(raw_claim(b)), due, args.repeat)
            results[(size, due)] = orm
            ratio = orm / raw if raw else float("nan")
            say(
                f"{size:>9,} flows {due:>5,} due | ORM claim+dispatch {orm * 1000:8.2f} ms "
                f"({orm_statements} statements) | raw SQL {raw * 1000:8.2f} ms "
                f"({raw_statements} statements) | ORM/raw {ratio:.2f}x"
            )
        overdue, overdue_statements = measure_overdue(args.repeat)
        say(
            f"{size:>9,} flows | overdue check {overdue * 1000:8.2f} ms "
            f"({overdue_statements} statement)"
        )
    if len(args.sizes) > 1:
        small, large = args.sizes[0], args.sizes[-1]
        for due in args.due:
            ratio = results[(large, due)] / results[(small, due)]
            say(f"{large:,} vs {small:,} flows, {due:,} due: {ratio:.2f}x")
    say(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
