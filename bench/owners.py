"""Benchmark the flow list and the run list for an owner beside a superuser (PostgreSQL).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_owners_bench python bench/owners.py

Fills ``--flows`` flows (2,000) and ``--runs`` finished runs (200,000 by default; the issue's
figure is 1,000,000: pass ``--runs 1000000`` on an idle machine) with ``generate_series``;
one user owns ``--owned`` (10) of the flows, spread over the table. Then measures the API's
``GET flows/`` and ``GET runs/`` first pages (the DRF views, called with a request factory)
as that owner (no model permission) and as a superuser: median milliseconds of
``--repeat`` rounds and the queries each page takes. Target: the same order of time and
no query per row for the owner's scoping. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_owners_bench")

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from rest_framework.test import APIRequestFactory, force_authenticate  # noqa: E402

from django_dataflows.api.views import DataFlowRunViewSet, DataFlowViewSet  # noqa: E402
from django_dataflows.models import DataFlow  # noqa: E402

FLOWS = "dataflows_dataflow"
RUNS = "dataflows_dataflowrun"
CHUNK = 100_000


def build(flows: int, runs: int, owned: int, owner: Any) -> None:
    """``flows`` flows, ``owned`` of them owner's (every flows/owned-th), and ``runs`` runs."""
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {RUNS}, {FLOWS} RESTART IDENTITY CASCADE")
        step = max(flows // owned, 1)
        DataFlow.objects.bulk_create(
            DataFlow(
                name=f"flow-{i}",
                flow="tests.testapp.flows.CountRows",
                run_interval=3600,
                owner=owner if i % step == 0 and i // step <= owned else None,
            )
            for i in range(1, flows + 1)
        )
        for start in range(0, runs, CHUNK):
            stop = min(start + CHUNK, runs)
            cursor.execute(
                f"""INSERT INTO {RUNS} (data_flow_id, status, trigger, created_at, started_at,
                        ended_at, error_message, error_backtrace, result, attempt, task_id,
                        queue, input, progress, redeliveries, updated_at)
                    SELECT 1 + i %% %(flows)s, 'success', 'schedule', created, created,
                        created + interval '1 second', '', '', NULL, 1, md5(i::text),
                        'default', '{{}}', '{{}}', 0, created
                    FROM (SELECT i, now() - (%(runs)s - i) * interval '30 days' / %(runs)s
                          AS created FROM generate_series(%(start)s, %(stop)s) AS i) AS g""",
                {"flows": flows, "runs": runs, "start": start + 1, "stop": stop},
            )
            say(f"  inserted {stop:,}/{runs:,} runs")
        cursor.execute(f"VACUUM ANALYZE {FLOWS}")
        cursor.execute(f"VACUUM ANALYZE {RUNS}")


def page(view: Callable[..., Any], path: str, user: Any) -> Callable[[], Any]:
    factory = APIRequestFactory()

    def call() -> Any:
        request = factory.get(path)
        force_authenticate(request, user)
        response = view(request)
        response.render()
        assert response.status_code == 200, response.content[:200]
        return response

    return call


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, int]:
    function()
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            function()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--owned", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()
    ensure_database()
    users = get_user_model().objects
    owner, _ = users.get_or_create(username="bench-owner")
    superuser, _ = users.get_or_create(
        username="bench-superuser", defaults={"is_superuser": True, "is_staff": True}
    )
    say(f"Building {options.flows:,} flows ({options.owned} owned) and {options.runs:,} runs…")
    build(options.flows, options.runs, options.owned, owner)
    flows_view = DataFlowViewSet.as_view({"get": "list"})
    runs_view = DataFlowRunViewSet.as_view({"get": "list"})
    say(f"load average before: {os.getloadavg()}")
    say(f"{'page':<22}{'user':<12}{'median ms':>10}{'queries':>9}")
    for label, view, path in (
        ("GET flows/", flows_view, "/flows/"),
        ("GET runs/", runs_view, "/runs/"),
    ):
        for name, user in (("owner", owner), ("superuser", superuser)):
            milliseconds, queries = timed(page(view, path, user), options.repeat)
            say(f"{label:<22}{name:<12}{milliseconds:>10.1f}{queries:>9}")
    say(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
