"""The admin's statistics: success rate and p50 / p95 per flow; soft-deleted runs hidden."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db

FLOWS = reverse("admin:dataflows_dataflow_changelist")
RUNS = reverse("admin:dataflows_dataflowrun_changelist")


def flow_with_runs(name: str, *durations: int, failed: int = 0) -> DataFlow:
    flow: DataFlow = DataFlowFactory(name=name)
    for duration in durations:
        DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS, duration_ms=duration)
    for _ in range(failed):
        DataFlowRunFactory(data_flow=flow, status=RunStatus.FAILED, duration_ms=10)
    return flow


def row_of(html: str, name: str) -> str:
    start = html.index(f">{name}</a>")
    return html[start : html.index("</tr>", start)]


def test_flow_list_shows_success_rate_and_percentiles(admin_client: Any) -> None:
    flow_with_runs("steady", 100, 200, 300, failed=1)
    flow_with_runs("idle")
    html = admin_client.get(FLOWS).content.decode()
    steady = row_of(html, "steady")
    assert "75%" in steady
    assert "150 ms" in steady  # p50 of 10, 100, 200, 300
    assert "285 ms" in steady  # p95
    assert "no runs" in row_of(html, "idle")
    assert "P95 (7 days)" in html


def test_flow_list_statistics_cost_the_same_queries_for_many_flows(admin_client: Any) -> None:
    flow_with_runs("a", 1, 2)
    admin_client.get(FLOWS)
    with CaptureQueriesContext(connection) as few:
        admin_client.get(FLOWS)
    for index in range(30):
        flow_with_runs(f"flow-{index}", index, index + 1, failed=1)
    with CaptureQueriesContext(connection) as many:
        admin_client.get(FLOWS)
    assert len(many) == len(few)


def test_flow_change_page_shows_statistics(admin_client: Any) -> None:
    flow = flow_with_runs("steady", 100, 300)
    html = admin_client.get(reverse("admin:dataflows_dataflow_change", args=[flow.pk])).content
    text = html.decode()
    assert "last 7 days" in text
    assert "all time" in text
    assert "100%" in text
    assert "200 ms" in text  # p50 of 100 and 300


def test_soft_deleted_runs_leave_the_flow_statistics(admin_client: Any) -> None:
    flow = flow_with_runs("steady", 100, failed=1)
    flow.runs.get(status=RunStatus.FAILED).soft_delete()
    assert "100%" in row_of(admin_client.get(FLOWS).content.decode(), "steady")


def test_run_list_hides_soft_deleted_runs_by_default(admin_client: Any) -> None:
    kept = DataFlowRunFactory(status=RunStatus.SUCCESS)
    deleted = DataFlowRunFactory(status=RunStatus.SUCCESS)
    deleted.soft_delete()

    def listed(query: dict[str, str]) -> set[int]:
        response = admin_client.get(RUNS, query)
        return {run.pk for run in response.context["cl"].result_list}

    assert listed({}) == {kept.pk}
    assert listed({"deleted": "yes"}) == {deleted.pk}
    assert listed({"deleted": "all"}) == {kept.pk, deleted.pk}
    assert "Not deleted" in admin_client.get(RUNS).content.decode()
    # Still there for audit: its page opens.
    page = admin_client.get(reverse("admin:dataflows_dataflowrun_change", args=[deleted.pk]))
    assert page.status_code == 200
    assert DataFlowRun.objects.filter(pk=deleted.pk).exists()
