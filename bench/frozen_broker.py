"""How long a heartbeat takes to answer when the broker freezes in the middle of its batch.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_faults \\
        python bench/frozen_broker.py --flows 10 100 500 --socket-timeout 1

For each batch size: N due flows on the Celery backend, a gunicorn server (``tests.wsgi``)
and a ``redis-server`` of its own on a spare port, which receives ``SIGSTOP`` just before
the 4th run is published (after a first heartbeat with nothing due, which warms the
server up). It prints the heartbeat's status and how long the answer took.
The first publish to the frozen broker times out and the rest of the batch is given back
without being tried, so the time should not grow with N. Printed, never asserted. The
database (default ``dataflows_bench_faults``) is created and migrated if missing.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_faults")

from django.db import connection  # noqa: E402
from tests.async_workers import worker_database_url  # noqa: E402
from tests.faults import AppServer, RedisServer  # noqa: E402

from django_dataflows.models import DataFlow, DataFlowRun  # noqa: E402

CELERY = "django_dataflows.backends.celery.CeleryBackend"


def database_now() -> datetime.datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        now: datetime.datetime = cursor.fetchone()[0]
    return now


def flows_due_later(count: int) -> None:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    flows = [
        DataFlow(name=f"bench-{i}", flow="tests.testapp.flows.NoOp", run_interval=3600)
        for i in range(count)
    ]
    DataFlow.objects.bulk_create(flows)
    DataFlow.objects.update(next_run_at=database_now() + datetime.timedelta(hours=1))


def one_round(count: int, socket_timeout: float, logs: Path) -> tuple[int, float]:
    flows_due_later(count)
    redis = RedisServer(logs)
    redis.start()
    server = AppServer(
        logs / f"gunicorn-{count}.log",
        settings={"BACKEND": CELERY},
        env={
            "DATABASE_URL": worker_database_url(),
            "DATAFLOWS_TEST_BROKER_URL": redis.url,
            "DATAFLOWS_TEST_BROKER_PREFIX": "bench-faults:",
            "DATAFLOWS_TEST_BROKER_SOCKET_TIMEOUT": str(socket_timeout),
            "DATAFLOWS_TEST_PUBLISH_FAULT": f"SIGSTOP:{redis.pid}:4",
        },
    )
    try:
        server.start()
        server.heartbeat()  # warm up the server (nothing is due yet)
        DataFlow.objects.update(next_run_at=database_now() - datetime.timedelta(minutes=1))
        started = time.monotonic()
        answer = server.heartbeat()
        return answer.status, time.monotonic() - started
    finally:
        server.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--socket-timeout", type=float, default=1.0)
    args = parser.parse_args()
    ensure_database()
    with tempfile.TemporaryDirectory(prefix="dataflows-bench-faults-") as logs:
        for count in args.flows:
            status, seconds = one_round(count, args.socket_timeout, Path(logs))
            say(
                f"{count:>5} due flows, broker frozen at the 4th publish "
                f"(socket_timeout {args.socket_timeout:g} s): HTTP {status} after {seconds:.1f} s"
            )


if __name__ == "__main__":
    main()
