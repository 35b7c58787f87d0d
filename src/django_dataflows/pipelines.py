"""Flows that trigger flows: which downstream flows are ready, and what a new run takes in.

A downstream flow is *ready* when its upstream flows have succeeded since it last took
them in: every one of them (``wait_for="all"``) or any one (``"any"``). How far it has
taken each one in is an :class:`~django_dataflows.models.UpstreamMark` (the id of the
newest successful upstream run a run of it was started for; runs of one flow never
overlap, so a larger id is a later success). The run started for a ready flow is its next
*generation*: ``generation`` is unique per flow, so however many heartbeats and workers
race, one run is started per generation. The heartbeat's claim
(:mod:`django_dataflows.scheduling`) locks the ready flows, then reads what they take in
with a fresh snapshot, so a generation another claim committed meanwhile is never taken
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Q
from django.db.models.expressions import RawSQL

from django_dataflows.models import (
    DataFlow,
    DataFlowQuerySet,
    DataFlowRun,
    RunStatus,
    RunTrigger,
    UpstreamMark,
    WaitFor,
)

#: The dependency table (``DataFlow.upstream_flows``): ``from_dataflow`` is the downstream
#: flow, ``to_dataflow`` its upstream flow.
Dependency = DataFlow.upstream_flows.through


def _tables() -> dict[str, str]:
    quote = connection.ops.quote_name
    return {
        "edges": quote(Dependency._meta.db_table),
        "runs": quote(DataFlowRun._meta.db_table),
        "marks": quote(UpstreamMark._meta.db_table),
        "flows": quote(DataFlow._meta.db_table),
    }


# The status is a literal, not a parameter, so that PostgreSQL matches the partial index of
# successful runs (dataflows_run_success_idx) with a generic plan too.
# Every identifier comes from the models' _meta, quoted; every value is a constant of ours
# or an integer key.
_NEWER_SUCCESS = (
    "{runs} r WHERE r.data_flow_id = e.to_dataflow_id AND r.status = '"  # noqa: S608
    + RunStatus.SUCCESS.value
    + "' AND r.id > COALESCE((SELECT m.run_id FROM {marks} m "
    "WHERE m.downstream_id = e.from_dataflow_id AND m.upstream_id = e.to_dataflow_id), 0)"
)

#: The ids of flows that are ready: driven by the dependency table (only flows with
#: upstream flows are read), one index seek per dependency.
_READY_SQL = (
    "SELECT d.id FROM {flows} d WHERE d.id IN ("  # noqa: S608
    "SELECT e.from_dataflow_id FROM {edges} e WHERE EXISTS (SELECT 1 FROM "
    + _NEWER_SUCCESS
    + ")) AND (d.wait_for = '"
    + WaitFor.ANY.value
    + "' OR NOT EXISTS (SELECT 1 FROM {edges} e WHERE e.from_dataflow_id = d.id "
    "AND NOT EXISTS (SELECT 1 FROM " + _NEWER_SUCCESS + ")))"
)

#: Per dependency of the given downstream flows: the newest upstream success not yet taken
#: in (NULL when there is none).
_TAKE_SQL = (
    "SELECT e.from_dataflow_id, e.to_dataflow_id, (SELECT MAX(r.id) FROM "  # noqa: S608
    + _NEWER_SUCCESS
    + ") FROM {edges} e WHERE e.from_dataflow_id IN ({ids})"
)


def ready_flows(flow_ids: list[int] | None = None) -> DataFlowQuerySet:
    """Enabled flows whose upstream flows have succeeded since they last took them in.

    ``flow_ids`` narrows the search to those flows (a finished run's downstream flows).
    """
    ready_ids = RawSQL(_READY_SQL.format(**_tables()), ())  # noqa: S611 - see _NEWER_SUCCESS
    flows = DataFlow.objects.filter(enabled=True, pk__in=ready_ids)
    if flow_ids is not None:
        flows = flows.filter(pk__in=flow_ids)
    return flows


@dataclass
class Generation:
    """A ready flow's next generation: its run, and the upstream runs it takes in."""

    run: DataFlowRun
    #: The newest new successful run of each upstream flow taken in, by upstream flow.
    upstream_runs: dict[int, int]


def next_generations(flows: list[DataFlow], now: datetime) -> list[Generation]:
    """The pending run (not saved) of each flow still ready, with what it takes in.

    One query, read after the flows were locked: a generation another claim committed
    meanwhile has moved the marks, so its upstream runs are not taken twice.
    """
    if not flows:
        return []
    newest: dict[int, dict[int, int | None]] = {flow.pk: {} for flow in flows}
    ids = ", ".join(str(int(flow.pk)) for flow in flows)
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_SQL.format(ids=ids, **_tables()))
        for downstream_id, upstream_id, run_id in cursor.fetchall():
            newest[downstream_id][upstream_id] = run_id
    generations = []
    for flow in flows:
        found = newest[flow.pk]
        taken = {upstream: run_id for upstream, run_id in found.items() if run_id is not None}
        wanted = all if flow.wait_for == WaitFor.ALL else any
        if not found or not taken or not wanted(run_id is not None for run_id in found.values()):
            continue
        run = DataFlowRun(
            data_flow=flow,
            status=RunStatus.PENDING,
            trigger=RunTrigger.UPSTREAM,
            created_at=now,
            activated_at=now,
            queue=flow.effective_queue,
            generation=flow.upstream_generation + 1,
        )
        generations.append(Generation(run=run, upstream_runs=taken))
    return generations


def record_generations(generations: list[Generation], now: datetime) -> None:
    """Record what the inserted generations took in (three statements for them all).

    The links from each run to its upstream runs, the flows' marks, and on each flow its
    generation and the new run's start.
    """
    if not generations:
        return
    link = DataFlowRun.upstream_runs.through
    link.objects.bulk_create(
        link(from_dataflowrun_id=generation.run.pk, to_dataflowrun_id=run_id)
        for generation in generations
        for run_id in generation.upstream_runs.values()
    )
    UpstreamMark.objects.bulk_create(
        [
            UpstreamMark(
                downstream_id=generation.run.data_flow_id, upstream_id=upstream, run_id=run_id
            )
            for generation in generations
            for upstream, run_id in generation.upstream_runs.items()
        ],
        update_conflicts=True,
        unique_fields=["downstream", "upstream"],
        update_fields=["run_id"],
    )
    flows = []
    for generation in generations:
        flow = generation.run.data_flow
        flow.upstream_generation = generation.run.generation or 0
        flow.last_run_at = now
        flow.last_run_status = RunStatus.PENDING
        flows.append(flow)
    if connection.vendor != "postgresql":
        fields = ["upstream_generation", "last_run_at", "last_run_status"]
        DataFlow.objects.bulk_update(flows, fields)
        return
    # bulk_update's CASE costs a branch of Python per flow; two arrays cost none.
    with connection.cursor() as cursor:
        cursor.execute(
            _GENERATION_SQL.format(**_tables()),
            [
                now,
                RunStatus.PENDING.value,
                [flow.pk for flow in flows],
                [flow.upstream_generation for flow in flows],
            ],
        )


_GENERATION_SQL = (
    "UPDATE {flows} AS flow SET upstream_generation = taken.generation, "
    "last_run_at = %s, last_run_status = %s "
    "FROM unnest(%s::bigint[], %s::bigint[]) AS taken(id, generation) WHERE flow.id = taken.id"
)


def give_generations_back(runs: list[DataFlowRun]) -> None:
    """Make what refused downstream runs took in ready again: nothing of theirs ran.

    For each upstream run a refused run took in, its flow's mark goes back to just before
    that run (so it is new again, and the next claim takes it or a newer one); the refused
    run lets go of its generation and its links, and the flow's generation counter goes
    back one. Call inside the refusal's transaction; runs of other triggers are ignored.
    """
    refused = [run for run in runs if run.trigger == RunTrigger.UPSTREAM and run.generation]
    if not refused:
        return
    link = DataFlowRun.upstream_runs.through
    flow_of = {run.pk: run.data_flow_id for run in refused}
    taken = link.objects.filter(from_dataflowrun_id__in=flow_of).values_list(
        "from_dataflowrun_id", "to_dataflowrun_id", "to_dataflowrun__data_flow_id"
    )
    for run_id, upstream_run_id, upstream_flow_id in list(taken):
        UpstreamMark.objects.filter(
            downstream_id=flow_of[run_id], upstream_id=upstream_flow_id, run_id=upstream_run_id
        ).update(run_id=upstream_run_id - 1)
    link.objects.filter(from_dataflowrun_id__in=flow_of).delete()
    DataFlowRun.objects.filter(pk__in=flow_of).update(generation=None)
    for run in refused:
        assert run.generation is not None
        DataFlow.objects.filter(pk=run.data_flow_id, upstream_generation=run.generation).update(
            upstream_generation=run.generation - 1
        )
        run.generation = None


def dependency_neighbours(data_flow_id: int) -> tuple[set[int], bool]:
    """The flow's downstream flows, and whether it has upstream flows itself (one query)."""
    downstream: set[int] = set()
    has_upstreams = False
    for downstream_id, upstream_id in Dependency.objects.filter(
        Q(from_dataflow_id=data_flow_id) | Q(to_dataflow_id=data_flow_id)
    ).values_list("from_dataflow_id", "to_dataflow_id"):
        if upstream_id == data_flow_id:
            downstream.add(downstream_id)
        if downstream_id == data_flow_id:
            has_upstreams = True
    return downstream, has_upstreams
