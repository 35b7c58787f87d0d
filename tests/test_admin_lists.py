"""The admin's run list and flow page never count the whole run table."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_dataflows.models import DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:dataflows_dataflowrun_changelist")


def many_runs(count, **fields):
    flow = fields.pop("data_flow", None) or DataFlowFactory()
    DataFlowRun.objects.bulk_create(
        DataFlowRun(data_flow=flow, status=RunStatus.SUCCESS, task_id=str(i), **fields)
        for i in range(count)
    )
    return flow


def test_the_run_list_counts_at_most_a_bounded_number_of_rows(admin_client, monkeypatch):
    monkeypatch.setattr("django_dataflows.admin.lists.EXACT_COUNT_LIMIT", 5)
    many_runs(8)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RUNS)
    assert response.status_code == 200
    counts = [query["sql"] for query in queries if "COUNT(" in query["sql"].upper()]
    # Every count of runs is over a LIMITed subquery: no COUNT(*) of the whole table.
    assert counts
    assert all("LIMIT" in sql.upper() for sql in counts if "dataflowrun" in sql)
    assert len(response.context["cl"].result_list) == 8
    assert response.context["cl"].paginator.count >= 6


def test_the_run_list_has_no_date_hierarchy_but_a_created_filter(admin_client):
    flow = DataFlowFactory()
    recent = DataFlowRunFactory(data_flow=flow, created_at=timezone.now())
    DataFlowRunFactory(data_flow=flow, created_at=timezone.now() - datetime.timedelta(days=3))
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RUNS, {"created_within": "24h"})
    assert not any("DISTINCT" in query["sql"].upper() for query in queries)
    assert [run.pk for run in response.context["cl"].result_list] == [recent.pk]
    assert response.context["cl"].date_hierarchy is None


def test_the_flow_page_bounds_its_run_count(admin_client, monkeypatch):
    monkeypatch.setattr("django_dataflows.admin.flows.EXACT_COUNT_LIMIT", 3)
    flow = many_runs(5)
    response = admin_client.get(reverse("admin:dataflows_dataflow_change", args=[flow.pk]))
    assert "See the whole history (more than 3 runs)" in response.content.decode()


@pytest.mark.postgres
def test_past_the_bound_postgresql_estimates_the_count(admin_client, monkeypatch):
    monkeypatch.setattr("django_dataflows.admin.lists.EXACT_COUNT_LIMIT", 5)
    many_runs(40)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE dataflows_dataflowrun")
    response = admin_client.get(RUNS)
    assert response.context["cl"].paginator.count >= 6


def test_the_flow_filter_lists_a_bounded_number_of_flows_and_the_chosen_one(
    admin_client, monkeypatch
):
    monkeypatch.setattr("django_dataflows.admin.lists.FlowFilter.FLOWS_LISTED", 2)
    flows = [DataFlowFactory(name=f"flow {letter}") for letter in "abcd"]
    run = DataFlowRunFactory(data_flow=flows[3])
    response = admin_client.get(RUNS, {"data_flow__id__exact": flows[3].pk})
    choices = [
        choice["display"]
        for choice in response.context["cl"].filter_specs[2].choices(response.context["cl"])
    ]
    assert choices == ["All", "flow a", "flow b", "flow d"]
    assert [row.pk for row in response.context["cl"].result_list] == [run.pk]
    assert (
        admin_client.get(RUNS, {"data_flow__id__exact": "x"}).context["cl"].result_list.count() == 0
    )


def test_a_page_far_down_lists_the_rows_of_plain_slicing_in_order(admin_client, monkeypatch):
    # Its keys are found first, then its rows loaded: the same runs, in the list's order.
    flow = DataFlowFactory()
    start = timezone.now()
    DataFlowRun.objects.bulk_create(
        DataFlowRun(
            data_flow=flow,
            status=RunStatus.SUCCESS,
            task_id=str(i),
            # Ties on created_at: the key breaks them, as the list's ordering does.
            created_at=start - datetime.timedelta(minutes=i // 2),
        )
        for i in range(250)
    )
    expected = list(DataFlowRun.objects.order_by("-created_at", "-pk").values_list("pk", flat=True))
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(RUNS, {"p": 3})
    offsets = [query["sql"] for query in queries if "OFFSET" in query["sql"].upper()]
    # The only query that skips rows reads their keys alone, with no join.
    assert len(offsets) == 1
    assert "JOIN" not in offsets[0].upper()
    assert offsets[0].upper().startswith('SELECT "DATAFLOWS_DATAFLOWRUN"."ID" AS "PK" FROM')
    listed = [run.pk for run in response.context["cl"].result_list]
    assert listed == expected[200:]
    assert [run.pk for run in admin_client.get(RUNS, {"p": 2}).context["cl"].result_list] == (
        expected[100:200]
    )
