"""Flows that trigger flows: upstream flows, wait_for, generations, cycles."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_dataflows import signals
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, RunTrigger
from django_dataflows.pipelines import ready_flows
from django_dataflows.scheduling import claim_due_flows, run_heartbeat, start_ready_downstream
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db


def unscheduled(name: str, *upstreams: DataFlow, **fields) -> DataFlow:
    flow = DataFlowFactory(name=name, run_interval=None, **fields)
    flow.upstream_flows.set(upstreams)
    return flow


@pytest.fixture
def without_receiver():
    """The heartbeat alone starts downstream flows (as when a worker died after a success)."""
    signals.run_finished.disconnect(sender=DataFlow, dispatch_uid="dataflows.pipelines")
    yield
    signals.run_finished.connect(
        start_ready_downstream, sender=DataFlow, dispatch_uid="dataflows.pipelines"
    )


@pytest.fixture
def started(django_capture_on_commit_callbacks):
    """Start a flow as trigger_run() does outside a test's transaction: handed over at once."""

    def start(flow: DataFlow) -> DataFlowRun:
        with django_capture_on_commit_callbacks(execute=True):
            run = flow.trigger_run()
        run.refresh_from_db()
        return run

    return start


def succeeded(flow: DataFlow, **fields) -> DataFlowRun:
    return DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, **fields)


def test_a_flow_without_a_schedule_is_never_due():
    flow = unscheduled("report")

    assert flow.next_run_at is None
    assert not DataFlow.objects.due_to_run(timezone.now() + datetime.timedelta(days=365))
    assert run_heartbeat().flows_triggered == 0
    assert flow.upcoming_runs() == []


def test_a_flow_without_a_schedule_still_runs_when_started(started):
    flow = unscheduled("report")

    run = started(flow)

    assert run.status == RunStatus.SUCCESS
    flow.refresh_from_db()
    assert flow.next_run_at is None


def test_the_downstream_flow_runs_as_soon_as_its_upstream_flow_succeeds(started):
    orders = DataFlowFactory(name="orders")
    report = unscheduled("report", orders, flow="tests.testapp.flows.ReportsPipeline")

    upstream_run = started(orders)

    run = report.runs.get()
    assert (run.trigger, run.status, run.generation) == (RunTrigger.UPSTREAM, "success", 1)
    assert list(run.upstream_runs.all()) == [upstream_run]
    assert run.result == {
        "slot": None,
        "previous_slot": None,
        "upstream": {"orders": upstream_run.result},
    }


def test_a_failed_upstream_run_starts_nothing(started):
    orders = DataFlowFactory(name="orders", flow="tests.testapp.flows.Explode")
    report = unscheduled("report", orders)

    assert started(orders).status == RunStatus.FAILED
    assert not report.runs.exists()


def test_the_next_heartbeat_starts_a_ready_downstream_flow(without_receiver, started):
    orders = DataFlowFactory(name="orders")
    report = unscheduled("report", orders)
    started(orders)
    assert not report.runs.exists()

    result = run_heartbeat()

    run = report.runs.get()
    assert (run.trigger, run.status) == (RunTrigger.UPSTREAM, RunStatus.SUCCESS)
    assert result.flows_triggered == 1


def test_wait_for_all_waits_for_every_upstream_flow(without_receiver):
    a, b = unscheduled("a"), unscheduled("b")
    both = unscheduled("both", a, b)
    succeeded(a)

    assert run_heartbeat().flows_triggered == 0
    succeeded(b)
    run_heartbeat()

    assert both.runs.count() == 1
    assert sorted(both.runs.get().upstream_runs.values_list("data_flow__name", flat=True)) == [
        "a",
        "b",
    ]


def test_wait_for_any_runs_after_either_upstream_flow(without_receiver):
    a, b = unscheduled("a"), unscheduled("b")
    either = unscheduled("either", a, b, wait_for="any")
    succeeded(a)
    run_heartbeat()
    succeeded(b)
    run_heartbeat()

    runs = either.runs.order_by("pk")
    assert [list(run.upstream_runs.values_list("data_flow__name", flat=True)) for run in runs] == [
        ["a"],
        ["b"],
    ]


def test_one_generation_runs_once_however_often_it_is_claimed(without_receiver):
    orders = DataFlowFactory(name="orders")
    report = unscheduled("report", orders)
    succeeded(orders)

    for _ in range(3):
        with transaction.atomic():
            claim_due_flows()

    assert report.runs.count() == 1


def test_the_database_refuses_a_second_run_of_one_generation():
    report = unscheduled("report")
    DataFlowRunFactory(data_flow=report, generation=1)

    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowRunFactory(data_flow=report, generation=1)


def test_a_busy_downstream_flow_runs_once_when_free_with_the_newest_upstream_runs():
    orders = unscheduled("orders")
    report = unscheduled("report", orders)
    busy = DataFlowRunFactory(data_flow=report, status=RunStatus.IN_PROGRESS)
    succeeded(orders)
    newest = succeeded(orders)

    assert run_heartbeat().flows_skipped == 1
    busy.status = RunStatus.SUCCESS
    busy.save()
    busy.data_flow.refresh_from_db()  # as the worker reads it when the run ends
    # The busy run's end frees the flow: its collapsed generation starts at once.
    signals.run_finished.send(sender=DataFlow, run=busy, status=RunStatus.SUCCESS)

    run = report.runs.get(trigger=RunTrigger.UPSTREAM)
    assert list(run.upstream_runs.all()) == [newest]
    assert run_heartbeat().flows_triggered == 0


def test_a_chain_runs_to_its_end_after_the_first_flow_succeeds(started):
    first = DataFlowFactory(name="step-0")
    previous = first
    for index in range(1, 30):
        previous = unscheduled(f"step-{index}", previous)

    started(first)

    assert DataFlowRun.objects.filter(status=RunStatus.SUCCESS).count() == 30
    assert previous.runs.get().upstream_runs.get().data_flow.name == "step-28"


def test_a_flow_with_a_schedule_and_upstream_flows_runs_for_both(without_receiver):
    orders = DataFlowFactory(name="orders")
    report = DataFlowFactory(name="report", run_interval=3600)
    report.upstream_flows.set([orders])
    succeeded(orders)

    run_heartbeat()  # the new flow's first slot, then its generation
    run_heartbeat()

    assert sorted(report.runs.values_list("trigger", flat=True)) == [
        RunTrigger.SCHEDULE,
        RunTrigger.UPSTREAM,
    ]


def test_setting_and_clearing_upstream_flows_marks_the_flows_in_a_pipeline():
    a, b = DataFlowFactory(name="a"), DataFlowFactory(name="b")

    b.upstream_flows.add(a)
    marked = dict(DataFlow.objects.values_list("name", "in_pipeline"))
    a.downstream_flows.clear()

    assert marked == {"a": True, "b": True}
    assert dict(DataFlow.objects.values_list("name", "in_pipeline")) == {"a": False, "b": False}


def test_a_disabled_downstream_flow_is_not_started(without_receiver):
    orders = DataFlowFactory(name="orders")
    report = unscheduled("report", orders, enabled=False)
    succeeded(orders)

    run_heartbeat()

    assert not report.runs.exists()


# -- cycles --------------------------------------------------------------------------------


def test_a_flow_cannot_be_its_own_upstream_flow():
    a = DataFlowFactory(name="A")
    a.upstream_flows.set([a])

    with pytest.raises(ValidationError) as raised:
        a.full_clean()

    assert raised.value.message_dict["upstream_flows"] == [
        "A flow cannot be its own upstream flow: A → A."
    ]


def test_a_cycle_is_refused_naming_its_path():
    a = DataFlowFactory(name="A")
    b = unscheduled("B", a)
    c = unscheduled("C", b)
    a.upstream_flows.set([c])

    with pytest.raises(ValidationError) as raised:
        a.full_clean()

    assert raised.value.message_dict["upstream_flows"] == [
        "These upstream flows would make a cycle: A → B → C → A."
    ]


# -- the claim's cost ----------------------------------------------------------------------


@pytest.mark.postgres
def test_the_claim_stays_within_ten_statements_with_ready_downstream_flows(without_receiver):
    upstreams = [DataFlowFactory(name=f"up-{index}") for index in range(5)]
    for index in range(20):
        unscheduled(f"down-{index}", *upstreams[: 1 + index % 5])
    for upstream in upstreams:
        succeeded(upstream)
    for index in range(20):
        due = DataFlowFactory(name=f"due-{index}")
        DataFlow.objects.filter(pk=due.pk).update(next_run_at=timezone.now())

    now = timezone.now()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        claim = claim_due_flows(now)

    assert len(claim.runs) == 45  # 20 downstream flows, 25 due flows (the upstreams too)
    statements = [q["sql"] for q in queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) <= 10, statements


# -- API and admin -------------------------------------------------------------------------


def api_client():
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    api = APIClient()
    api.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    return api


def test_the_api_sets_upstream_flows_and_shows_both_directions():
    orders = DataFlowFactory(name="orders")
    api = api_client()

    response = api.post(
        "/dataflows/api/flows/",
        {
            "name": "report",
            "flow": "tests.testapp.flows.CountRows",
            "upstream_flows": [orders.pk],
            "wait_for": "any",
        },
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["upstream_flows"], body["wait_for"], body["next_run_at"]) == (
        [orders.pk],
        "any",
        None,
    )
    assert api.get(f"/dataflows/api/flows/{orders.pk}/").json()["downstream_flows"] == [body["id"]]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("wait_for", "most", '"most" is not a valid choice.'),
        ("catchup", "sometimes", '"sometimes" is not a valid choice.'),
    ],
)
def test_the_api_refuses_bad_pipeline_choices(field, value, message):
    flow = DataFlowFactory(name="orders")

    response = api_client().patch(f"/dataflows/api/flows/{flow.pk}/", {field: value}, format="json")

    assert response.status_code == 400
    assert response.json()[field] == [message]


def test_the_api_refuses_a_cycle_naming_it_and_writes_nothing():
    a = DataFlowFactory(name="A")
    b = unscheduled("B", a)

    response = api_client().patch(
        f"/dataflows/api/flows/{a.pk}/", {"upstream_flows": [b.pk], "enabled": False}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["upstream_flows"] == [
        "These upstream flows would make a cycle: A → B → A."
    ]
    a.refresh_from_db()
    assert (list(a.upstream_flows.all()), a.enabled) == ([], True)


def test_the_admin_refuses_a_cycle_naming_it(admin_client):
    a = DataFlowFactory(name="A")
    b = unscheduled("B", a)

    response = admin_client.post(
        f"/admin/dataflows/dataflow/{a.pk}/change/",
        {
            "name": "A",
            "flow": "tests.testapp.flows.CountRows",
            "enabled": "on",
            "schedule_kind": "interval",
            "run_interval": "60",
            "configuration": "{}",
            "upstream_flows": [b.pk],
            "wait_for": "all",
            "catchup": "latest",
        },
    )

    assert response.status_code == 200
    assert "These upstream flows would make a cycle: A → B → A." in response.content.decode()
    assert not a.upstream_flows.exists()


def test_the_admin_shows_a_flows_neighbours_and_latest_generation(admin_client, started):
    orders = DataFlowFactory(name="orders")
    report = unscheduled("report", orders)
    upstream = started(orders)

    page = admin_client.get(f"/admin/dataflows/dataflow/{orders.pk}/change/").content.decode()
    report_page = admin_client.get(
        f"/admin/dataflows/dataflow/{report.pk}/change/"
    ).content.decode()

    assert f'<a href="/admin/dataflows/dataflow/{report.pk}/change/">report</a>' in page
    assert "generation 1" in report_page
    assert f"orders #{upstream.pk}" in report_page


# -- real processes racing on PostgreSQL ---------------------------------------------------


def race(modes: list[tuple[str, int]]) -> Counter[str]:
    """Run one worker process per (mode, count) at once; return their summed outcomes."""
    from tests.test_race import ROOT, database_url

    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.pipeline_race_worker", mode, str(count)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode, count in modes
    ]
    outcomes: Counter[str] = Counter()
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        outcomes.update(json.loads(out))
        assert "error" not in outcomes, err
    return outcomes


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_racing_heartbeats_and_workers_run_each_generation_exactly_once():
    from tests.testapp.models import Record

    up = [unscheduled(f"up-{index}") for index in range(2)]
    every = unscheduled("every", *up)
    either = unscheduled("either", *up, wait_for="any")
    after = unscheduled("after-every", every)

    outcomes = race([("upstream", 12), ("upstream", 12)] + [("heartbeat", 25)] * 4)
    run_heartbeat()  # whatever was still ready when the race ended
    run_heartbeat()

    assert outcomes["started"] > 0
    assert not ready_flows().exists()  # none lost: every success was taken in
    runs = DataFlowRun.objects.all()
    assert set(runs.values_list("status", flat=True)) == {RunStatus.SUCCESS}
    assert sorted(Record.objects.values_list("run_id", flat=True)) == sorted(
        runs.values_list("pk", flat=True)
    )  # each run's body ran once
    for downstream in (every, either, after):
        generations = list(downstream.runs.order_by("generation").prefetch_related("upstream_runs"))
        assert [run.generation for run in generations] == list(range(1, len(generations) + 1))
        taken = [upstream.pk for run in generations for upstream in run.upstream_runs.all()]
        assert len(taken) == len(set(taken)), f"{downstream.name} took an upstream run twice"
    # "either" waits for any one upstream flow: it took in each one's newest success.
    for upstream in up:
        newest = upstream.runs.latest("pk")
        assert newest.downstream_runs.filter(data_flow=either).exists()


def test_the_graph_page_draws_each_dependency_as_an_arrow(admin_client):
    orders = DataFlowFactory(name="orders")
    unscheduled("report", orders)
    DataFlowFactory(name="alone")

    page = admin_client.get("/admin/dataflows/dataflow/graph/").content.decode()

    assert page.count('class="dataflows-graph-node"') == 2
    assert "<title>orders → report</title>" in page
    assert "1 flow without dependencies is not drawn." in page
    assert "<script" not in page.split('id="dataflows-graph"')[1].split("</div>")[0]


def test_the_graph_page_without_dependencies_says_so(admin_client):
    DataFlowFactory(name="alone")

    page = admin_client.get("/admin/dataflows/dataflow/graph/").content.decode()

    assert "No flow has upstream or downstream flows yet." in page


def test_the_graph_places_a_flow_right_of_its_deepest_upstream_flow():
    from django_dataflows.admin.graph import flow_depths

    assert flow_depths([1, 2, 3, 4], [(1, 2), (2, 3), (1, 3)]) == {1: 0, 2: 1, 3: 2, 4: 0}
    # A cycle stored before cycles were refused still ends.
    assert set(flow_depths([1, 2], [(1, 2), (2, 1)])) == {1, 2}


def test_the_graph_page_needs_the_view_permission(client):
    from tests.factories import UserFactory

    client.force_login(UserFactory(is_staff=True))

    assert client.get("/admin/dataflows/dataflow/graph/").status_code == 403
