"""Every transition of the table, carried out both ways: the same rows.

``apply()`` goes through the ORM in one transaction on any database, and on PostgreSQL
outside a transaction as one statement compiled from the same querysets. Each case runs
a transition from every status through each execution and compares what the run, its
flow and its steps hold afterwards with the transition's definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models.functions import Now

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from django_dataflows.runs.transitions import (
    ACTIONS,
    TRANSITIONS,
    Transition,
    allowed_actions,
    refusal,
)
from django_dataflows.runs.writes import apply, apply_many
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db(transaction=True)

#: What the comparison reads: the columns a transition may write, as booleans for the
#: timestamps (their values differ from run to run, their presence must not).
RUN_FIELDS = ("status", "error_message", "result", "scheduled_for")
STAMPS = ("started_at", "activated_at", "ended_at", "cancel_requested_at", "pause_requested_at")


def orm(function: Callable[[], Any]) -> Any:
    """Through the ORM: inside a transaction, as every caller in one is."""
    with transaction.atomic():
        return function()


def one_statement(function: Callable[[], Any]) -> Any:
    """As a worker on PostgreSQL: outside a transaction, one statement."""
    assert not connection.in_atomic_block
    return function()


EXECUTIONS = [pytest.param(orm, id="orm")]
if connection.vendor == "postgresql":
    EXECUTIONS.append(pytest.param(one_statement, id="one-statement"))


def a_run(status: str, **fields: Any) -> DataFlowRun:
    """A run in ``status``, with the timestamps a run in it would have."""
    data_flow = DataFlowFactory(last_run_status=RunStatus.PENDING)
    started = status not in (RunStatus.PENDING,)
    values: dict[str, Any] = {
        "started_at": Now() if started else None,
        "ended_at": Now()
        if status not in (RunStatus.PENDING, RunStatus.IN_PROGRESS, RunStatus.PAUSED)
        else None,
        **fields,
    }
    run: DataFlowRun = DataFlowRunFactory(data_flow=data_flow, status=status)
    DataFlowRun.objects.filter(pk=run.pk).update(**values)
    run.refresh_from_db()
    return run


def snapshot(run: DataFlowRun) -> dict[str, Any]:
    stored = DataFlowRun.objects.get(pk=run.pk)
    flow = DataFlow.objects.get(pk=run.data_flow_id)
    return {
        **{name: getattr(stored, name) for name in RUN_FIELDS},
        **{name: getattr(stored, name) is not None for name in STAMPS},
        "duration": stored.duration_ms == _expected_duration(stored),
        "flow_status": flow.last_run_status,
        "flow_last_run_at": flow.last_run_at == stored.started_at,
        "steps": sorted(stored.steps.values_list("name", "status")),
    }


def _expected_duration(run: DataFlowRun) -> int | None:
    if run.started_at is None or run.ended_at is None:
        return None
    return round((run.ended_at - run.started_at).total_seconds() * 1000)


CASES = [
    (transition, status)
    for transition in TRANSITIONS.values()
    if transition.target is not None or transition.stamps
    for status in RunStatus.values
]


@pytest.mark.parametrize("execute", EXECUTIONS)
@pytest.mark.parametrize(
    ("transition", "status"), CASES, ids=[f"{t.name}-from-{s}" for t, s in CASES]
)
def test_a_transition_applies_from_its_sources_only_and_writes_its_definition(
    transition: Transition, status: str, execute: Callable[[Callable[[], Any]], Any]
) -> None:
    run = a_run(status)
    run.steps.create(position=1, name="extract", status="success")
    run.steps.create(position=2, name="load", status="in_progress", started_at=Now())
    run.steps.create(position=3, name="report")
    before = snapshot(run)

    applied = execute(lambda: apply(transition, run, fields={"error_message": "told"}))

    after = snapshot(run)
    assert applied is (status in transition.sources)
    if not applied:
        assert after == before
        return
    assert after["status"] == (transition.target or status)
    assert after["error_message"] == "told"
    assert after["duration"]  # ended_at - started_at, as stored, or none
    for name in (*transition.stamps, *transition.first_stamps):
        assert after[name], name
    for name in transition.clears:
        assert not after[name], name
    # The object shows what the database wrote, its clock included.
    stored = DataFlowRun.objects.get(pk=run.pk)
    assert (run.status, run.started_at, run.ended_at, run.duration_ms) == (
        stored.status,
        stored.started_at,
        stored.ended_at,
        stored.duration_ms,
    )
    if transition.flow_status:
        assert after["flow_status"] == transition.target
    else:
        assert after["flow_status"] == before["flow_status"]
    if transition.flow_last_run_at:
        assert after["flow_last_run_at"]
    steps = dict(after["steps"])
    if transition.closes_steps:
        assert steps["load"] != "in_progress"
        assert steps["report"] == "skipped"
        assert steps["extract"] == "success"
    else:
        assert after["steps"] == before["steps"]


@pytest.mark.parametrize("execute", EXECUTIONS)
def test_an_end_writes_the_flows_state_with_it(execute: Callable[..., Any]) -> None:
    run = a_run(RunStatus.IN_PROGRESS)

    execute(lambda: apply(TRANSITIONS["succeed"], run, flow_fields={"state": {"cursor": 7}}))

    flow = DataFlow.objects.get(pk=run.data_flow_id)
    assert (flow.state, flow.last_run_status) == ({"cursor": 7}, RunStatus.SUCCESS)
    assert flow.last_run_at == DataFlowRun.objects.get(pk=run.pk).started_at


def test_many_runs_move_together_and_only_those_still_in_a_source() -> None:
    moving = [a_run(RunStatus.IN_PROGRESS) for _ in range(3)]
    finished = a_run(RunStatus.SUCCESS)

    moved = apply_many(TRANSITIONS["time_out"], [*moving, finished], fields={"error_message": "x"})

    assert sorted(run.pk for run in moved) == sorted(run.pk for run in moving)
    assert set(DataFlowRun.objects.values_list("status", flat=True)) == {
        RunStatus.TIMED_OUT,
        RunStatus.SUCCESS,
    }
    assert all(run.duration_ms is not None and run.ended_at for run in moved)


@pytest.mark.parametrize("status", RunStatus.values)
def test_the_allowed_actions_are_those_whose_transitions_apply(status: str) -> None:
    run = a_run(status)

    allowed = allowed_actions(run)

    for action, transitions in ACTIONS.items():
        assert (action in allowed) is any(status in t.sources for t in transitions)


def test_a_request_already_made_blocks_a_second_one_with_its_own_words() -> None:
    run = a_run(RunStatus.IN_PROGRESS, cancel_requested_at=Now())

    assert allowed_actions(run) == []
    assert str(refusal(run, "cancel")) == (
        f"Cannot cancel run {run.pk}: a cancel was already requested; it ends at its next "
        "checkpoint."
    )
    assert "a cancel was already requested" in str(refusal(run, "pause"))


def test_a_refusal_names_the_statuses_the_table_allows() -> None:
    run = a_run(RunStatus.SUCCESS)

    assert str(refusal(run, "cancel")).endswith(
        "it is success, not pending, in_progress or paused."
    )
    assert str(refusal(run, "resume")).endswith("it is success, not paused.")
    assert str(refusal(run, "retry")).endswith("it is success, not failed, timed_out or cancelled.")


def test_many_runs_write_their_flows_as_one_run_would() -> None:
    runs = [a_run(RunStatus.IN_PROGRESS) for _ in range(2)]

    moved = apply_many(TRANSITIONS["time_out"], runs)

    for run in moved:
        flow = DataFlow.objects.get(pk=run.data_flow_id)
        assert flow.last_run_status == RunStatus.TIMED_OUT
        assert flow.last_run_at == DataFlowRun.objects.get(pk=run.pk).started_at


def test_the_reaper_leaves_a_run_whose_cancel_came_meanwhile_to_its_cancel() -> None:
    run = a_run(RunStatus.IN_PROGRESS)
    # Read as stuck without a cancel request; the cancel lands before the reaper writes.
    DataFlowRun.objects.filter(pk=run.pk).update(cancel_requested_at=Now())

    assert apply_many(TRANSITIONS["time_out_lost"], [run]) == []
    assert [r.pk for r in apply_many(TRANSITIONS["stop_cancelled"], [run])] == [run.pk]
    assert DataFlowRun.objects.get(pk=run.pk).status == RunStatus.CANCELLED
