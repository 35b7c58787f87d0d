"""Rules that live in the models, so every door keeps them: the admin, the API, the shell.

A flow with an active run cannot be deleted (its history would go while a body runs), and
turning a schedule on or off has one implementation.
"""

from __future__ import annotations

import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from django_dataflows.exceptions import FlowHasActiveRun
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory

pytestmark = pytest.mark.django_db


def busy_flow(name: str = "busy") -> DataFlow:
    data_flow: DataFlow = DataFlowFactory(name=name)
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.IN_PROGRESS)
    return data_flow


def test_the_shell_cannot_delete_a_flow_with_an_active_run() -> None:
    data_flow = busy_flow()

    with pytest.raises(FlowHasActiveRun, match="'busy' has an active run"):
        data_flow.delete()

    assert DataFlow.objects.filter(pk=data_flow.pk).exists()
    assert DataFlowRun.objects.filter(data_flow=data_flow).exists()


def test_a_queryset_delete_refuses_all_when_one_flow_is_busy_and_names_it() -> None:
    idle = DataFlowFactory(name="idle")
    busy_flow("busy-a")

    with pytest.raises(FlowHasActiveRun, match="'busy-a'"):
        DataFlow.objects.all().delete()

    assert set(DataFlow.objects.values_list("name", flat=True)) == {"idle", "busy-a"}
    idle.delete()
    assert not DataFlow.objects.filter(name="idle").exists()


def test_a_finished_history_goes_with_its_flow() -> None:
    data_flow = DataFlowFactory()
    DataFlowRunFactory(data_flow=data_flow, status=RunStatus.FAILED)

    data_flow.delete()

    assert not DataFlowRun.objects.exists()


def test_the_admin_delete_page_says_why_and_deletes_nothing(admin_client) -> None:
    data_flow = busy_flow()
    url = reverse("admin:dataflows_dataflow_delete", args=[data_flow.pk])

    page = admin_client.get(url)
    posted = admin_client.post(url, {"post": "yes"})

    assert page.status_code == 200
    assert "still in progress; cancel it or wait for it to finish" in page.content.decode()
    assert posted.status_code in (200, 403)
    assert DataFlow.objects.filter(pk=data_flow.pk).exists()


def test_the_admin_delete_action_refuses_a_busy_flow(admin_client) -> None:
    data_flow = busy_flow()
    idle = DataFlowFactory(name="idle")
    changelist = reverse("admin:dataflows_dataflow_changelist")

    response = admin_client.post(
        changelist,
        {"action": "delete_selected", "_selected_action": [data_flow.pk, idle.pk], "post": "yes"},
    )

    assert response.status_code == 200
    assert "still in progress" in response.content.decode()
    assert DataFlow.objects.count() == 2


def test_set_enabled_recomputes_the_next_run_and_says_whether_it_changed() -> None:
    long_ago = timezone.now() - datetime.timedelta(days=30)
    data_flow = DataFlowFactory(enabled=False, run_interval=3600)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=long_ago, last_run_at=long_ago)
    data_flow.refresh_from_db()

    assert data_flow.set_enabled(True) is True
    assert data_flow.set_enabled(True) is False

    data_flow.refresh_from_db()
    assert data_flow.enabled
    # Enabled again after a month: due now, not thirty slots in the past.
    assert data_flow.next_run_at >= timezone.now() - datetime.timedelta(minutes=1)
