"""Benchmark the Celery backend against raw Celery tasks: dispatch, and one worker.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_celery \\
        python bench/celery_throughput.py

Measures, in the same run, on PostgreSQL and Redis:

* **dispatch** (no worker): one heartbeat's claim + publish of N due runs
  (``claim_due_flows`` + ``dispatch_many`` with ``CeleryBackend``) against the raw-SQL claim
  of ``bench/raw.py`` followed by a raw ``apply_async`` of the same N messages on one
  producer; the median of ``--repeat`` rounds and the ratio (target ≤ 1.2x).
* **one worker** (``tests.celery_app``, solo pool, one process, Redis broker, its database
  connection kept for ``--db-reuse-max`` tasks), alternately: N raw no-op Celery tasks;
  N raw tasks that each do one durable single-row UPDATE (the **floor** for a run that
  must commit its outcome durably); N dataflows no-op runs (N due flows, one heartbeat,
  each run taken and recorded by ``FlowExecutor``). Each round is timed from the first
  enqueue until a sentinel task sent after the N messages has run (the worker handles its
  queue in order). It prints the medians and the ratios (targets: dataflows ≥ 0.8x the
  floor; the ratio to raw no-op tasks is printed too).
* the worker's code alone, in this process (no Celery), and the SQL statements it sends
  per run; once as configured, once with Django's default of no prepared statements.

Like a tuned production worker, the worker and this process keep their database connection
(``CELERY_DB_REUSE_MAX``) and let psycopg prepare statements (``OPTIONS["prepare_threshold"]``
5; ``DATAFLOWS_TEST_PREPARE_THRESHOLD=`` empty turns that off).

The database (default ``dataflows_bench_celery``) is created and migrated if missing;
Redis is ``DATAFLOWS_TEST_BROKER_URL`` (default ``redis://127.0.0.1:6379/5``).
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
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from raw import raw_claim  # noqa: E402
from tests.async_tasks import mark, noop, touch  # noqa: E402
from tests.async_workers import WorkerProcess, celery_worker, wait_for  # noqa: E402
from tests.celery_app import BROKER_KEY_PREFIX  # noqa: E402
from tests.celery_app import app as celery_app  # noqa: E402
from tests.testapp.models import Record  # noqa: E402

from django_dataflows.backends.celery import execute_run  # noqa: E402
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus  # noqa: E402
from django_dataflows.runs.starting import dispatch_many  # noqa: E402
from django_dataflows.scheduling import claim_due_flows, run_heartbeat  # noqa: E402
from django_dataflows.tasks import run_data_flow  # noqa: E402

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


def floor_round(count: int) -> Round:
    """Send ``count`` tasks that each commit one single-row UPDATE; wait for them all."""
    ids = list(Record.objects.filter(label__startswith="floor-").values_list("pk", flat=True))
    label = f"floor-done-{uuid.uuid4().hex}"
    started = time.perf_counter()
    for index in range(count):
        touch.apply_async(args=(ids[index % len(ids)],), queue=QUEUE)
    enqueue = time.perf_counter() - started
    mark.apply_async(args=(label,), queue=QUEUE)
    say(f"    sent {count:,} raw UPDATE tasks in {enqueue:.2f} s")
    return Round(enqueue, wait_until_handled(label, count, started))


def make_all_due() -> None:
    DataFlowRun.objects.all().delete()
    DataFlow.objects.update(next_run_at=timezone.now() - timedelta(seconds=1))


def forget_queue() -> None:
    redis_client().delete(f"{BROKER_KEY_PREFIX}{QUEUE}")


def dispatch_rounds(count: int, repeat: int) -> tuple[float, float, int]:
    """Median seconds of ours and of the raw claim + publish; our statements per heartbeat."""
    ours, raw, statements = [], [], 0
    for index in range(repeat):
        make_all_due()
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            with transaction.atomic():
                runs = claim_due_flows(batch_size=count).runs
            refused = dispatch_many(runs)
            ours.append(time.perf_counter() - started)
        statements = len(queries)
        assert (len(runs), refused) == (count, 0), (len(runs), refused)
        forget_queue()
        make_all_due()
        started = time.perf_counter()
        claimed = raw_claim(count)
        with celery_app.producer_or_acquire() as producer:
            for run_id, task_id, queue in claimed:
                run_data_flow.apply_async(
                    args=(run_id,), task_id=task_id, queue=queue, producer=producer
                )
        raw.append(time.perf_counter() - started)
        assert len(claimed) == count
        forget_queue()
        say(
            f"  round {index + 1}/{repeat}: ours {ours[-1] * 1000:.0f} ms "
            f"({statements} statements), raw {raw[-1] * 1000:.0f} ms"
        )
    return statistics.median(ours), statistics.median(raw), statements


def dataflows_round(count: int) -> Round:
    """Make ``count`` flows due, run one heartbeat, wait until the worker ran every run."""
    make_all_due()
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


def executor_alone(count: int, *, prepare_threshold: int | None) -> tuple[float, float]:
    """The worker's code without Celery: runs per second, and SQL statements per run.

    ``prepare_threshold`` is psycopg's, on this connection (``None``: never prepare).
    """
    make_all_due()
    with transaction.atomic():
        runs = claim_due_flows(batch_size=count).runs
    connection.ensure_connection()
    connection.connection.prepare_threshold = prepare_threshold
    with CaptureQueriesContext(connection) as queries:
        execute_run(runs[0].pk)
    started = time.perf_counter()
    for run in runs[1:]:
        execute_run(run.pk)
    return (count - 1) / (time.perf_counter() - started), float(len(queries))


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
    Record.objects.bulk_create(Record(label=f"floor-{i}") for i in range(100))
    say(f"Dispatch: one heartbeat's claim + publish of {args.runs:,} runs, {args.repeat} rounds")
    ours, raw, statements = dispatch_rounds(args.runs, args.repeat)
    rounds: dict[str, list[Round]] = {"raw": [], "floor": [], "dataflows": []}
    kinds: dict[str, Callable[[int], Round]] = {
        "raw": raw_round,
        "floor": floor_round,
        "dataflows": dataflows_round,
    }
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
            Record.objects.filter(label__regex=r"^(raw|dataflows|warm-up|floor)-").delete()

    say("  the worker's code alone, in this process (no Celery):")
    threshold = connection.settings_dict["OPTIONS"].get("prepare_threshold")
    alone, per_run = executor_alone(args.runs, prepare_threshold=threshold)
    say(f"    {alone:,.0f} runs per second, {per_run:.0f} SQL statements per run")
    unprepared, _per_run = executor_alone(args.runs, prepare_threshold=None)
    say(f"    {unprepared:,.0f} runs per second with Django's default (no prepared statements)")

    def rate(kind: str) -> float:
        return args.runs / statistics.median(r.total for r in rounds[kind])

    floor_ratio = rate("dataflows") / rate("floor")
    raw_ratio = rate("dataflows") / rate("raw")
    reuse = args.db_reuse_max
    say(
        f"Medians of {args.repeat} rounds of {args.runs:,}, CELERY_DB_REUSE_MAX {reuse}, "
        f"prepare_threshold {threshold}:"
    )
    say("  dispatch, claim + publish of one heartbeat:")
    say(f"    dataflows (claim_due_flows + dispatch_many) {ours * 1000:7.0f} ms ({statements} SQL)")
    say(f"    raw SQL claim + apply_async on one producer {raw * 1000:7.0f} ms")
    say(f"    dataflows / raw                             {ours / raw:7.2f}x  (target <= 1.2x)")
    say("  one worker, end to end:")
    for kind, title in (
        ("raw", "raw no-op Celery tasks"),
        ("floor", "raw tasks, one durable UPDATE each"),
        ("dataflows", "dataflows no-op runs"),
    ):
        say(f"    {title:<36} {rate(kind):7,.0f}/s")
    say(f"    dataflows / floor                    {floor_ratio:7.2f}x  (target >= 0.8x)")
    say(f"    dataflows / raw no-op                {raw_ratio:7.2f}x")
    say(f"  the worker's code alone, in-process    {alone:7,.0f}/s ({per_run:.0f} SQL per run)")
    say(f"    without prepared statements          {unprepared:7,.0f}/s")


if __name__ == "__main__":
    main()
