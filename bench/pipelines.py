"""Benchmark pipelines on PostgreSQL: chains, fan-in, the claim with dependencies, backfills.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/dataflows_bench_pipelines \\
        python bench/pipelines.py [--chain 100] [--fan-in 100] [--flows 10000] \\
        [--with-upstreams 1000] [--slots 1000]

With the in-process backend (the runs are a no-op flow), it prints:

* a chain of ``--chain`` flows (each the upstream of the next) and a fan-in of ``--fan-in``
  upstream flows into one: the time from the first upstream run's success to the last
  downstream run's start, in seconds and in heartbeats, once with the ``run_finished``
  receiver (downstream flows start at once) and once with the heartbeat alone;
* the heartbeat's claim among ``--flows`` flows of which ``--with-upstreams`` have upstream
  flows (none ready, then 100 ready), against the same table without dependencies:
  statements and median time (target: at most 10 statements, at most 2x the time);
* a backfill of ``--slots`` slots: wall time and statements per slot.

Figures are indicative (printed with the load average), never asserted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

from common import ensure_database, say, setup_django

setup_django("postgres://postgres@127.0.0.1:5432/dataflows_bench_pipelines")

from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext, override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402

from django_dataflows import signals  # noqa: E402
from django_dataflows.models import (  # noqa: E402
    DataFlow,
    DataFlowRun,
    RunStatus,
    mark_pipeline_flows,
)
from django_dataflows.scheduling import (  # noqa: E402
    claim_due_flows,
    run_heartbeat,
    start_ready_downstream,
)

NO_OP = "tests.testapp.flows.NoOp"
DEPENDENCY = DataFlow.upstream_flows.through


def reset() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE dataflows_dataflowrun, dataflows_dataflow, dataflows_backfill "
            "RESTART IDENTITY CASCADE"
        )


def unscheduled(names: list[str]) -> list[DataFlow]:
    DataFlow.objects.bulk_create(
        DataFlow(name=name, flow=NO_OP, run_interval=None, next_run_at=None) for name in names
    )
    return list(DataFlow.objects.filter(name__in=names).order_by("pk"))


def link(edges: list[tuple[DataFlow, DataFlow]]) -> None:
    DEPENDENCY.objects.bulk_create(
        DEPENDENCY(from_dataflow_id=downstream.pk, to_dataflow_id=upstream.pk)
        for upstream, downstream in edges
    )
    # Inserted in bulk, not through the relation: mark the flows as .set() would.
    mark_pipeline_flows({flow.pk for edge in edges for flow in edge})


def receiver(connected: bool) -> None:
    if connected:
        signals.run_finished.connect(
            start_ready_downstream, sender=DataFlow, dispatch_uid="dataflows.pipelines"
        )
    else:
        signals.run_finished.disconnect(sender=DataFlow, dispatch_uid="dataflows.pipelines")


def latency(kind: str, size: int, *, immediate: bool) -> tuple[float, int]:
    """Seconds and heartbeats from the first upstream success to the last downstream start."""
    reset()
    if kind == "chain":
        flows = unscheduled([f"chain-{index}" for index in range(size)])
        link(list(itertools.pairwise(flows)))
        first, last = flows[0], flows[-1]
        upstreams = [first]
    else:
        upstreams = unscheduled([f"up-{index}" for index in range(size)])
        (last,) = unscheduled(["fan-in"])
        link([(upstream, last) for upstream in upstreams])
    receiver(immediate)
    try:
        for upstream in upstreams:
            upstream.trigger_run()
        heartbeats = 0
        while not last.runs.exists():
            run_heartbeat(source="bench")
            heartbeats += 1
            if heartbeats > size + 5:
                raise RuntimeError(f"{kind}: the last flow never started")
    finally:
        receiver(True)
    first_success = (
        DataFlowRun.objects.filter(data_flow__in=upstreams, status=RunStatus.SUCCESS)
        .order_by("ended_at")
        .values_list("ended_at", flat=True)
        .first()
    )
    last_start = last.runs.get().started_at
    assert first_success is not None
    assert last_start is not None
    return (last_start - first_success).total_seconds(), heartbeats


def median_time(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        with transaction.atomic():
            action()
            transaction.set_rollback(True)  # the same rows every round
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def claim_cost(
    flows: int, with_upstreams: int, ready: int, repeat: int, due: int = 0
) -> tuple[int, float]:
    """Statements and median seconds of one claim (``due`` flows due by their schedule)."""
    reset()
    later = timezone.now() + timedelta(days=365)
    DataFlow.objects.bulk_create(
        (
            DataFlow(name=f"flow-{index}", flow=NO_OP, run_interval=3600, next_run_at=later)
            for index in range(flows)
        ),
        batch_size=2000,
    )
    if due:
        first = DataFlow.objects.order_by("pk").values_list("pk", flat=True)[:due]
        DataFlow.objects.filter(pk__in=list(first)).update(next_run_at=timezone.now())
    if with_upstreams:
        pks = list(DataFlow.objects.order_by("pk").values_list("pk", flat=True))
        sources, downstream = pks[:with_upstreams], pks[-with_upstreams:]
        DEPENDENCY.objects.bulk_create(
            (
                DEPENDENCY(from_dataflow_id=down, to_dataflow_id=up)
                for up, down in zip(sources, downstream, strict=True)
            ),
            batch_size=2000,
        )
        # Each upstream flow has a history, and the first `ready` have a new success.
        DataFlowRun.objects.bulk_create(
            (
                DataFlowRun(
                    data_flow_id=up,
                    status=RunStatus.SUCCESS,
                    trigger="manual",
                    created_at=timezone.now(),
                )
                for up in sources[:ready]
            ),
            batch_size=2000,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    now = timezone.now()
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        claimed = claim_due_flows(now)
        transaction.set_rollback(True)
    assert len(claimed.runs) == ready + due, (len(claimed.runs), ready, due)
    statements = [
        query
        for query in queries
        if not query["sql"].startswith(("SAVEPOINT", "RELEASE", "BEGIN", "ROLLBACK"))
    ]
    return len(statements), median_time(lambda: claim_due_flows(now), repeat)


def backfill_cost(slots: int) -> tuple[float, float]:
    """Wall seconds and statements per slot of a backfill run in this process."""
    reset()
    flow = DataFlow.objects.create(name="hourly", flow=NO_OP, run_interval=3600)
    end = flow.next_run_at - timedelta(hours=1)
    # Not due meanwhile: the backfill has the flow to itself.
    DataFlow.objects.filter(pk=flow.pk).update(next_run_at=flow.next_run_at + timedelta(days=1))
    start = end - timedelta(hours=slots)
    backfill = flow.backfill(start, end)
    begin = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        run_heartbeat(source="bench")  # the first slot; each run's end starts the next
    seconds = time.perf_counter() - begin
    backfill.refresh_from_db()
    assert (backfill.status, backfill.done) == ("done", slots), (backfill.status, backfill.done)
    return seconds, len(queries) / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", type=int, default=100)
    parser.add_argument("--fan-in", type=int, default=100)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--with-upstreams", type=int, default=1_000)
    parser.add_argument("--slots", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    ensure_database()
    say(f"load average before: {os.getloadavg()}")
    with override_settings(DATAFLOWS={"BACKEND": "django_dataflows.backends.sync.SyncBackend"}):
        for kind, size in (("chain", args.chain), ("fan-in", args.fan_in)):
            for immediate in (True, False):
                seconds, heartbeats = latency(kind, size, immediate=immediate)
                how = "run_finished receiver" if immediate else "heartbeat alone"
                say(
                    f"{kind} of {size} ({how}): last downstream started {seconds:.3f}s after "
                    f"the first upstream success, {heartbeats} heartbeats"
                )
        baseline = claim_cost(args.flows, 0, 0, args.repeat)
        say(
            f"claim, {args.flows:,} flows, no dependencies: {baseline[0]} statements, "
            f"{baseline[1] * 1000:.2f} ms"
        )
        statements, seconds = claim_cost(args.flows, args.with_upstreams, 0, args.repeat)
        say(
            f"claim, {args.flows:,} flows, {args.with_upstreams:,} with upstream flows, "
            f"none ready: {statements} statements, {seconds * 1000:.2f} ms "
            f"({seconds / baseline[1]:.2f}x)"
        )
        due = claim_cost(args.flows, 0, 0, args.repeat, due=100)
        say(
            f"claim, {args.flows:,} flows, no dependencies, 100 due: {due[0]} statements, "
            f"{due[1] * 1000:.2f} ms"
        )
        statements, seconds = claim_cost(args.flows, args.with_upstreams, 100, args.repeat)
        say(
            f"claim, {args.flows:,} flows, {args.with_upstreams:,} with upstream flows, "
            f"100 ready: {statements} statements, {seconds * 1000:.2f} ms "
            f"({seconds / due[1]:.2f}x the claim of 100 due flows)"
        )
        seconds, per_slot = backfill_cost(args.slots)
        say(
            f"backfill of {args.slots:,} slots: {seconds:.2f}s wall "
            f"({seconds / args.slots * 1000:.2f} ms per slot), {per_slot:.1f} statements per slot"
        )
    say(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
