"""Making a flow due is starting runs: it needs ``dataflows.run_dataflow`` at every door."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from django_dataflows.models import DataFlow
from django_dataflows.permissions import fields_that_make_due
from tests.factories import DataFlowFactory, UserFactory

pytestmark = pytest.mark.django_db

API = "/dataflows/api/flows/"
EDITOR = ("view_dataflow", "add_dataflow", "change_dataflow")
NEW_FLOW = {"name": "new", "flow": "tests.testapp.flows.CountRows", "run_interval": 60}


def user_with(*codenames: str, **fields: Any) -> Any:
    user = UserFactory(**fields)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)


def api_as(*codenames: str) -> APIClient:
    api = APIClient()
    api.force_authenticate(user_with(*codenames))
    return api


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled_before", "changes", "needs"),
    [
        (None, {}, ["enabled"]),
        (None, {"enabled": True}, ["enabled"]),
        (None, {"enabled": False, "flow": "x"}, []),
        (False, {"enabled": True}, ["enabled"]),
        (False, {"flow": "tests.testapp.flows.Explode", "configuration": {"a": 1}}, []),
        (True, {"flow": "tests.testapp.flows.Explode"}, ["flow"]),
        (True, {"configuration": {"a": 1}}, ["configuration"]),
        (True, {"configuration": {}}, []),  # unchanged
        (True, {"description": "x", "run_interval": 5}, []),
        (True, {"enabled": False, "flow": "tests.testapp.flows.Explode"}, []),
    ],
)
def test_what_needs_the_run_permission(enabled_before, changes, needs) -> None:
    before = None if enabled_before is None else DataFlowFactory.build(enabled=enabled_before)
    assert fields_that_make_due(before, changes) == needs


# -- the API -------------------------------------------------------------------------------


def test_creating_an_enabled_flow_without_the_run_permission_is_403() -> None:
    response = api_as(*EDITOR).post(API, NEW_FLOW, format="json")
    assert response.status_code == 403
    assert "run_dataflow" in response.json()["detail"]
    assert not DataFlow.objects.exists()


def test_creating_a_disabled_flow_needs_no_run_permission() -> None:
    response = api_as(*EDITOR).post(API, {**NEW_FLOW, "enabled": False}, format="json")
    assert response.status_code == 201
    assert DataFlow.objects.get().enabled is False


def test_with_the_run_permission_an_enabled_flow_is_created() -> None:
    response = api_as(*EDITOR, "run_dataflow").post(API, NEW_FLOW, format="json")
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("enabled", "body"),
    [
        (False, {"enabled": True}),
        (True, {"flow": "tests.testapp.flows.Explode"}),
        (True, {"configuration": {"rows": 5}}),
    ],
)
def test_making_a_flow_due_by_patch_without_the_run_permission_is_403(enabled, body) -> None:
    flow = DataFlowFactory(enabled=enabled)
    response = api_as(*EDITOR).patch(f"{API}{flow.pk}/", body, format="json")
    assert response.status_code == 403
    flow.refresh_from_db()
    assert (flow.enabled, flow.flow, flow.configuration) == (
        enabled,
        "tests.testapp.flows.CountRows",
        {},
    )


def test_editing_a_disabled_flow_or_the_description_needs_no_run_permission() -> None:
    disabled = DataFlowFactory(enabled=False)
    enabled = DataFlowFactory()
    api = api_as(*EDITOR)
    body = {"flow": "tests.testapp.flows.Explode", "configuration": {"a": 1}}
    assert api.patch(f"{API}{disabled.pk}/", body, format="json").status_code == 200
    assert api.patch(f"{API}{enabled.pk}/", {"description": "x"}, format="json").status_code == 200


def test_the_enable_action_needs_the_run_permission() -> None:
    flow = DataFlowFactory(enabled=False)
    assert api_as(*EDITOR).post(f"{API}{flow.pk}/enable/").status_code == 403
    assert api_as(*EDITOR).post(f"{API}{flow.pk}/disable/").status_code == 200
    flow.refresh_from_db()
    assert flow.enabled is False
    assert api_as(*EDITOR, "run_dataflow").post(f"{API}{flow.pk}/enable/").status_code == 200


# -- the admin -----------------------------------------------------------------------------


def admin_as(client: Client, *codenames: str) -> Client:
    client.force_login(user_with(*codenames, is_staff=True))
    return client


def admin_form(**overrides: str) -> dict[str, str]:
    data = {
        "name": "orders",
        "description": "",
        "flow": "tests.testapp.flows.CountRows",
        "enabled": "on",
        "schedule_kind": "interval",
        "run_interval": "300",
        "cron": "",
        "timezone": "",
        "configuration": "{}",
        "queue": "",
        "max_retries": "",
        "timeout": "",
    }
    return {**data, **overrides}


def test_the_admin_refuses_adding_an_enabled_flow_without_the_run_permission(client) -> None:
    editor = admin_as(client, *EDITOR)
    response = editor.post(reverse("admin:dataflows_dataflow_add"), admin_form())
    assert response.status_code == 200
    assert "run_dataflow" in str(response.context["adminform"].form.errors["enabled"])
    assert not DataFlow.objects.exists()
    data = admin_form()
    del data["enabled"]
    response = editor.post(reverse("admin:dataflows_dataflow_add"), data)
    assert response.status_code == 302
    assert DataFlow.objects.get().enabled is False


def test_the_admin_refuses_changing_what_an_enabled_flow_runs(client) -> None:
    flow = DataFlowFactory(name="orders", run_interval=300)
    editor = admin_as(client, *EDITOR)
    url = reverse("admin:dataflows_dataflow_change", args=[flow.pk])
    response = editor.post(url, admin_form(flow="tests.testapp.flows.Explode"))
    assert response.status_code == 200
    assert "run_dataflow" in str(response.context["adminform"].form.errors["flow"])
    response = editor.post(url, admin_form(description="ok"))
    assert response.status_code == 302


def test_the_admin_enable_action_needs_the_run_permission(client) -> None:
    flow = DataFlowFactory(enabled=False)
    changelist = reverse("admin:dataflows_dataflow_changelist")
    editor = admin_as(client, *EDITOR)
    assert 'value="enable"' not in editor.get(changelist).content.decode()
    editor.post(changelist, {"action": "enable", "_selected_action": [flow.pk]})
    flow.refresh_from_db()
    assert flow.enabled is False


# -- what the schema promises ----------------------------------------------------------------


def test_the_schema_says_error_backtrace_is_optional() -> None:
    api = APIClient()
    api.force_authenticate(user_with("view_dataflowrun"))
    response = api.get("/dataflows/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    run = response.json()["components"]["schemas"]["DataFlowRun"]
    assert "error_backtrace" in run["properties"]
    assert "error_backtrace" not in run["required"]
    assert "error_message" in run["required"]
