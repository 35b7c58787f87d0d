"""Benchmark the Celery backend's throughput against raw Celery tasks, through one worker.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_celery \\
        python bench/celery_throughput.py

Starts one Celery worker (``tests.celery_app``, solo pool, one process, Redis broker, its
database connection kept for ``--db-reuse-max`` tasks) and sends through it, in the same
run and alternately:

* **raw**: N plain no-op Celery tasks (``tests.async_tasks.noop``);
* **dataflows**: N runs of the no-op flow ``tests.testapp.flows.NoOp``: N due flows, one
  heartbeat claims them and hands each run to ``CeleryBackend``; the worker executes each
  through ``FlowExecutor`` (pending → in progress → success, flow updated, signals sent).

Each round is timed from the first enqueue until a sentinel task sent after the N messages
has run (the worker handles its queue in order). It prints the median rate of each kind
over ``--repeat`` rounds and their ratio (the target is dataflows ≥ 0.5x raw), for the whole
trip and for the enqueueing alone, and, to show where a run's time goes, the rate of the
worker's code alone (load and execute runs in this process, without Celery). The database
(default ``dataflows_bench_celery``) is created and migrated if missing; Redis is
``DATAFLOWS_TEST_BROKER_URL`` (default ``redis://127.0.0.1:6379/5``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from common import ensure_database, say, setup_django

os.environ.setdefault("DATAFLOWS_TEST_BROKER_PREFIX", f"dataflows-bench-{uuid.uuid4().hex[:8]}:")
setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_celery")

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from tests.async_tasks import mark, noop  # noqa: E402
from tests.async_workers import WorkerProcess, celery_worker, wait_for  # noqa: E402
from tests.celery_app import BROKER_KEY_PREFIX  # noqa: E402
from tests.testapp.models import Record  # noqa: E402

from django_dataflows.backends.celery import execute_run  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402
from django_dataflows.scheduling import claim_due_flows, run_heartbeat  # noqa: E402

QUEUE = "bench"


def redis_client():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def build_flows(count: int) -> None:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.all().delete()
    DataFlow.objects.bulk_create(
        DataFlow(
            name=f"bench-{i}",
            flow="tests.testapp.flows.NoOp",
            queue=QUEUE,
            run_interval=86_400,
        )
        for i in range(count)
    )


def wait_until_handled(label: str, count: int, started: float) -> float:
    """Wait for the sentinel ``label``, showing how many of ``count`` messages are left."""
    broker = redis_client()
    key = f"{BROKER_KEY_PREFIX}{QUEUE}"
    last_report = 0.0

    def sentinel_done() -> bool:
        nonlocal last_report
        if Record.objects.filter(label=label).exists():
            return True
        now = time.perf_counter()
        if now - last_report >= 1:
            last_report = now
            waiting = min(broker.llen(key), count)
            say(f"    {count - waiting:>7,}/{count:,} taken by the worker ({now - started:.1f} s)")
        return False

    wait_for(sentinel_done, timeout=600, interval=0.01, what="the sentinel task")
    return time.perf_counter() - started


class Round(NamedTuple):
    enqueue: float  #: seconds to hand the N messages to the broker
    total: float  #: seconds until the worker had handled them all


def raw_round(count: int) -> Round:
    """Send ``count`` no-op tasks and wait until the worker has handled them all."""
    label = f"raw-{uuid.uuid4().hex}"
    started = time.perf_counter()
    for _ in range(count):
        noop.apply_async(queue=QUEUE)
    enqueue = time.perf_counter() - started
    mark.apply_async(args=(label,), queue=QUEUE)
    say(f"    sent {count:,} raw tasks in {enqueue:.2f} s")
    return Round(enqueue, wait_until_handled(label, count, started))


def dataflows_round(count: int) -> Round:
    """Make ``count`` flows due, run one heartbeat, wait until the worker ran every run."""
    DataFlowRun.objects.all().delete()
    DataFlow.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))
    label = f"dataflows-{uuid.uuid4().hex}"
    started = time.perf_counter()
    result = run_heartbeat(source="bench")
    enqueue = time.perf_counter() - started
    mark.apply_async(args=(label,), queue=QUEUE)
    assert result.flows_triggered == count, result
    assert result.enqueue_failures == 0, result
    say(f"    one heartbeat claimed and enqueued {count:,} runs in {enqueue:.2f} s")
    total = wait_until_handled(label, count, started)
    succeeded = DataFlowRun.objects.filter(status=RunStatus.SUCCESS).count()
    assert succeeded == count, f"only {succeeded} of {count} runs succeeded"
    return Round(enqueue, total)


def executor_alone(count: int) -> float:
    """Runs per second of the worker's code without Celery: load the run, execute it."""
    DataFlowRun.objects.all().delete()
    DataFlow.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))
    with transaction.atomic():
        runs = claim_due_flows(batch_size=count).runs
    started = time.perf_counter()
    for run in runs:
        execute_run(run.pk)
    return count / (time.perf_counter() - started)


def bench_worker(log_dir: Path, db_reuse_max: int) -> WorkerProcess:
    return celery_worker(
        "bench",
        [QUEUE],
        log_dir / "worker.log",
        loglevel="WARNING",
        DATABASE_URL=os.environ["DATABASE_URL"],
        DATAFLOWS_TEST_CELERY_DB_REUSE_MAX=str(db_reuse_max),
    )


def warm_up(worker: WorkerProcess) -> None:
    """Start the worker and wait until it has run a first task."""
    worker.start()
    label = f"warm-up-{uuid.uuid4().hex}"
    mark.apply_async(args=(label,), queue=QUEUE)
    wait_for(
        lambda: Record.objects.filter(label=label).exists(),
        timeout=60,
        what=f"the worker to take tasks\n{worker.log()}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="messages per round (N)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each kind")
    parser.add_argument(
        "--db-reuse-max",
        type=int,
        default=1000,
        help="CELERY_DB_REUSE_MAX of the worker: tasks per database connection (0: Celery's "
        "default, a new connection for every task)",
    )
    args = parser.parse_args()

    settings.DATAFLOWS = {
        "BACKEND": "django_dataflows.backends.celery.CeleryBackend",
        "HEARTBEAT_BATCH_SIZE": args.runs,
    }
    ensure_database()
    say(
        f"PostgreSQL {connection.cursor().connection.info.server_version}, Redis at "
        f"{settings.CELERY_BROKER_URL}, {args.runs:,} messages per round, {args.repeat} rounds"
    )
    say(f"Creating {args.runs:,} flows…")
    build_flows(args.runs)
    rounds: dict[str, list[Round]] = {"raw": [], "dataflows": []}
    kinds: dict[str, Callable[[int], Round]] = {"raw": raw_round, "dataflows": dataflows_round}
    with tempfile.TemporaryDirectory(prefix="dataflows-bench-") as log_dir:
        say("Starting the worker (solo pool, one process)…")
        worker = bench_worker(Path(log_dir), args.db_reuse_max)
        try:
            warm_up(worker)
            for index in range(args.repeat):
                for kind, run_round in kinds.items():
                    say(f"  round {index + 1}/{args.repeat}, {kind}:")
                    result = run_round(args.runs)
                    rounds[kind].append(result)
                    say(f"    {args.runs / result.total:,.0f} per second ({result.total:.2f} s)")
        finally:
            worker.stop()
            broker = redis_client()
            for key in broker.scan_iter(match=f"{BROKER_KEY_PREFIX}*"):
                broker.delete(key)
            Record.objects.filter(label__regex=r"^(raw|dataflows|warm-up)-").delete()

    say("  the worker's code alone, in this process (no Celery):")
    alone = executor_alone(args.runs)
    say(f"    {alone:,.0f} runs per second")

    def rate(kind: str, part: str) -> float:
        return args.runs / statistics.median(getattr(r, part) for r in rounds[kind])

    say(f"Medians of {args.repeat} rounds of {args.runs:,}:")
    say("                          end to end    enqueue only")
    for kind, title in (("raw", "raw no-op Celery tasks"), ("dataflows", "dataflows no-op runs")):
        say(f"  {title:<22} {rate(kind, 'total'):8,.0f}/s    {rate(kind, 'enqueue'):8,.0f}/s")
    ratio = rate("dataflows", "total") / rate("raw", "total")
    enqueue_ratio = rate("dataflows", "enqueue") / rate("raw", "enqueue")
    say(f"  dataflows / raw          {ratio:8.2f}x    {enqueue_ratio:8.2f}x   (target >= 0.5x)")
    say(f"  the worker's code alone  {alone:8,.0f}/s    (execute_run without Celery)")


if __name__ == "__main__":
    main()
