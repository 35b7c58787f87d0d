"""The REST API: every endpoint, filter, ordering, pagination edge, permission and error."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from django_dataflows.api.serializers import DataFlowRunSerializer
from django_dataflows.backends.base import BaseBackend
from django_dataflows.models import (
    DataFlow,
    DataFlowRun,
    DataFlowRunStep,
    RunStatus,
    RunTrigger,
    StepStatus,
)
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

API = "/dataflows/api/"


def grant(user: Any, *codenames: str) -> Any:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return type(user).objects.get(pk=user.pk)  # a fresh object: no cached permissions


VIEW_ALL = ("view_dataflow", "view_dataflowrun")


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


@pytest.fixture
def viewer() -> Any:
    return grant(UserFactory(), *VIEW_ALL)


@pytest.fixture
def client(viewer: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(viewer)
    return api


def client_for(*codenames: str, **user_fields: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(grant(UserFactory(**user_fields), *codenames))
    return api


# -- authentication and permissions ------------------------------------------------------


def test_anonymous_request_is_challenged_with_401() -> None:
    response = APIClient().get(f"{API}runs/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "detail" in response.json()


def test_bad_token_is_401() -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert api.get(f"{API}flows/").status_code == 401


def test_token_authentication_works() -> None:
    user = grant(UserFactory(), *VIEW_ALL)
    token = Token.objects.create(user=user)
    DataFlowFactory(name="nightly")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = api.get(f"{API}flows/")
    assert response.status_code == 200
    assert [flow["name"] for flow in response.json()["results"]] == ["nightly"]


def test_session_authentication_works() -> None:
    user = grant(UserFactory(username="alice"), *VIEW_ALL)
    api = APIClient()
    assert api.login(username=user.username, password="secret-password")
    assert api.get(f"{API}runs/").status_code == 200


def test_session_post_needs_csrf_token() -> None:
    user = grant(UserFactory(), "view_dataflow", "change_dataflow")
    flow = DataFlowFactory(enabled=True)
    api = APIClient(enforce_csrf_checks=True)
    api.force_login(user)
    response = api.post(f"{API}flows/{flow.pk}/disable/")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_user_without_view_permission_is_403() -> None:
    api = client_for()
    assert api.get(f"{API}flows/").status_code == 403
    assert api.get(f"{API}runs/").status_code == 403
    assert api.get(f"{API}stats/").status_code == 403
    assert api.get(f"{API}flow-types/").status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "flows/", {"name": "x", "flow": "tests.testapp.flows.CountRows"}),
        ("patch", "flows/{flow}/", {"description": "changed"}),
        ("delete", "flows/{flow}/", None),
        ("post", "flows/{flow}/enable/", None),
        ("post", "flows/{flow}/start/", {}),
        ("delete", "runs/{run}/", None),
        ("post", "runs/{run}/cancel/", None),
    ],
)
def test_viewer_cannot_change_anything(
    client: APIClient, method: str, path: str, body: Any
) -> None:
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    url = API + path.format(flow=run.data_flow_id, run=run.pk)
    response = getattr(client, method)(url, body, format="json")
    assert response.status_code == 403
    assert DataFlow.objects.count() == 1
    assert DataFlowRun.objects.get().status == RunStatus.PENDING


def test_starting_a_run_needs_run_permission_not_change_permission() -> None:
    flow = DataFlowFactory()
    editor = client_for("view_dataflow", "change_dataflow")
    assert editor.post(f"{API}flows/{flow.pk}/start/").status_code == 403
    runner = client_for("view_dataflow", "run_dataflow")
    assert runner.post(f"{API}flows/{flow.pk}/start/").status_code == 202


# -- flows -------------------------------------------------------------------------------


def test_flow_representation_has_every_field(client: APIClient) -> None:
    flow = DataFlowFactory(name="orders", configuration={"label": "a"}, queue="reports")
    body = client.get(f"{API}flows/{flow.pk}/").json()
    assert set(body) >= {
        "id",
        "name",
        "description",
        "flow",
        "enabled",
        "configuration",
        "run_interval",
        "cron",
        "timezone",
        "alert_after",
        "queue",
        "max_retries",
        "timeout",
        "last_run_at",
        "last_run_status",
        "next_run_at",
        "state",
        "overdue",
        "max_duration",
        "created_at",
        "updated_at",
    }
    assert body["name"] == "orders"
    assert body["configuration"] == {"label": "a"}


def test_create_flow() -> None:
    api = client_for("view_dataflow", "add_dataflow", "run_dataflow")
    response = api.post(
        f"{API}flows/",
        {"name": "sync", "flow": "tests.testapp.flows.CountRows", "run_interval": 300},
        format="json",
    )
    assert response.status_code == 201, response.json()
    flow = DataFlow.objects.get(name="sync")
    assert flow.run_interval == 300
    assert response.json()["id"] == flow.pk


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "flow": "os.system", "run_interval": 60}, "flow"),
        ({"name": "x", "flow": "tests.testapp.flows.CountRows", "run_interval": 0}, "run_interval"),
        (
            {"name": "x", "flow": "tests.testapp.flows.CountRows", "run_interval": 2**40},
            "run_interval",
        ),
        (
            {
                "name": "x",
                "flow": "tests.testapp.flows.CountRows",
                "run_interval": 1,
                "configuration": [1],
            },
            "configuration",
        ),
        (
            {
                "name": "x",
                "flow": "tests.testapp.flows.CountRows",
                "run_interval": 1,
                "configuration": {"a": "nul\u0000"},
            },
            "configuration",
        ),
        (
            {
                "name": "x",
                "flow": "tests.testapp.flows.CountRows",
                "run_interval": 1,
                "queue": "a b",
            },
            "queue",
        ),
        ({"name": "", "flow": "tests.testapp.flows.CountRows", "run_interval": 1}, "name"),
    ],
)
def test_create_flow_with_bad_input_is_400_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    api = client_for("view_dataflow", "add_dataflow")
    response = api.post(f"{API}flows/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not DataFlow.objects.exists()


def test_configuration_is_checked_against_the_flows_schema() -> None:
    api = client_for("view_dataflow", "add_dataflow", "change_dataflow", "run_dataflow")
    body = {
        "name": "schema",
        "flow": "tests.testapp.flows.WithSchema",
        "run_interval": 60,
        "configuration": {"batch_size": -1},
    }
    response = api.post(f"{API}flows/", body, format="json")
    assert response.status_code == 400
    assert response.json()["configuration"] == ["batch_size: -1 is less than the minimum of 1"]
    body["configuration"] = {"batch_size": 5}
    created = api.post(f"{API}flows/", body, format="json")
    assert created.status_code == 201
    patch = {"configuration": {}}
    response = api.patch(f"{API}flows/{created.json()['id']}/", patch, format="json")
    assert response.status_code == 400
    assert "batch_size" in response.json()["configuration"][0]


def test_flow_shows_whether_it_is_overdue(client: APIClient) -> None:
    late = DataFlowFactory(name="late", alert_after=60)
    DataFlow.objects.filter(pk=late.pk).update(created_at=timezone.now() - timedelta(hours=1))
    fine = DataFlowFactory(name="fine", alert_after=3600)
    DataFlowFactory(name="unwatched")
    listed = {
        flow["name"]: flow["overdue"] for flow in client.get(f"{API}flows/").json()["results"]
    }
    assert listed == {"late": True, "fine": False, "unwatched": False}
    assert client.get(f"{API}flows/{late.pk}/").json()["overdue"] is True
    assert client.get(f"{API}flows/{fine.pk}/").json()["overdue"] is False


def test_create_cron_flow() -> None:
    api = client_for("view_dataflow", "add_dataflow", "run_dataflow")
    body = {
        "name": "nightly",
        "flow": "tests.testapp.flows.CountRows",
        "cron": "30 2 * * 1-5",
        "timezone": "Europe/Berlin",
        "alert_after": 86400,
    }
    response = api.post(f"{API}flows/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["run_interval"] is None
    assert DataFlow.objects.get(name="nightly").cron == "30 2 * * 1-5"


@pytest.mark.parametrize(
    ("schedule", "fields"),
    [
        ({"cron": "30 2 * * *", "run_interval": 60}, {"cron", "run_interval"}),
        ({"cron": "@reboot"}, {"cron"}),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, {"timezone"}),
    ],
)
def test_flow_needs_at_most_one_valid_schedule(schedule: dict[str, Any], fields: set[str]) -> None:
    api = client_for("view_dataflow", "add_dataflow")
    body = {"name": "x", "flow": "tests.testapp.flows.CountRows", **schedule}
    response = api.post(f"{API}flows/", body, format="json")
    assert response.status_code == 400
    assert fields <= set(response.json())
    assert not DataFlow.objects.exists()


def test_duplicate_flow_name_is_400() -> None:
    DataFlowFactory(name="taken")
    api = client_for("view_dataflow", "add_dataflow")
    response = api.post(
        f"{API}flows/",
        {"name": "taken", "flow": "tests.testapp.flows.CountRows", "run_interval": 60},
        format="json",
    )
    assert response.status_code == 400
    assert "name" in response.json()


def test_malformed_json_is_400() -> None:
    api = client_for("view_dataflow", "add_dataflow")
    response = api.post(f"{API}flows/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()


def test_update_and_partial_update_flow() -> None:
    flow = DataFlowFactory(run_interval=60)
    api = client_for("view_dataflow", "change_dataflow")
    response = api.patch(f"{API}flows/{flow.pk}/", {"run_interval": 120}, format="json")
    assert response.status_code == 200
    flow.refresh_from_db()
    assert flow.run_interval == 120
    full = {"name": "renamed", "flow": flow.flow, "run_interval": 30, "enabled": False}
    assert api.put(f"{API}flows/{flow.pk}/", full, format="json").status_code == 200
    flow.refresh_from_db()
    assert (flow.name, flow.run_interval, flow.enabled) == ("renamed", 30, False)


def test_read_only_flow_fields_are_ignored_on_write() -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "change_dataflow")
    api.patch(
        f"{API}flows/{flow.pk}/",
        {"state": {"cursor": 9}, "last_run_status": "failed"},
        format="json",
    )
    flow.refresh_from_db()
    assert flow.state == {}
    assert flow.last_run_status == ""


def test_delete_flow_deletes_its_history() -> None:
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    api = client_for("view_dataflow", "delete_dataflow")
    assert api.delete(f"{API}flows/{run.data_flow_id}/").status_code == 204
    assert not DataFlow.objects.exists()
    assert not DataFlowRun.objects.exists()


def test_delete_flow_with_active_run_is_409() -> None:
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    api = client_for("view_dataflow", "delete_dataflow")
    response = api.delete(f"{API}flows/{run.data_flow_id}/")
    assert response.status_code == 409
    assert "active run" in response.json()["detail"]
    assert DataFlow.objects.exists()


def test_flow_list_filters_enabled_and_search(client: APIClient) -> None:
    DataFlowFactory(name="orders-sync", enabled=True)
    DataFlowFactory(name="orders-import", enabled=False)
    DataFlowFactory(name="weather", enabled=True)

    def names(query: str) -> list[str]:
        response = client.get(f"{API}flows/?{query}")
        assert response.status_code == 200
        return [flow["name"] for flow in response.json()["results"]]

    assert names("enabled=true") == ["orders-sync", "weather"]
    assert names("enabled=false") == ["orders-import"]
    assert names("search=ORDERS") == ["orders-import", "orders-sync"]
    assert names("search=orders&enabled=true") == ["orders-sync"]


def test_flow_list_bad_filter_is_400(client: APIClient) -> None:
    response = client.get(f"{API}flows/?enabled=perhaps")
    assert response.status_code == 400
    assert "enabled" in response.json()


def test_flow_list_is_paginated(client: APIClient) -> None:
    DataFlowFactory.create_batch(3)
    body = client.get(f"{API}flows/?page_size=2").json()
    assert "count" not in body
    assert len(body["results"]) == 2
    assert body["next"] is not None
    assert body["previous"] is None
    rest = client.get(body["next"]).json()
    assert len(rest["results"]) == 1
    assert rest["next"] is None


def test_enable_and_disable(client: APIClient) -> None:
    flow = DataFlowFactory(enabled=True)
    api = client_for("view_dataflow", "change_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{flow.pk}/disable/")
    assert response.status_code == 200
    assert response.json()["enabled"] is False
    flow.refresh_from_db()
    assert flow.enabled is False
    assert api.post(f"{API}flows/{flow.pk}/enable/").json()["enabled"] is True
    flow.refresh_from_db()
    assert flow.enabled is True


def test_upcoming(client: APIClient) -> None:
    flow = DataFlowFactory(run_interval=3600)
    body = client.get(f"{API}flows/{flow.pk}/upcoming/?count=3").json()
    assert len(body["upcoming"]) == 3
    assert client.get(f"{API}flows/{flow.pk}/upcoming/").json()["upcoming"]


@pytest.mark.parametrize("count", ["0", "51", "many"])
def test_upcoming_count_out_of_range_is_400(client: APIClient, count: str) -> None:
    flow = DataFlowFactory()
    response = client.get(f"{API}flows/{flow.pk}/upcoming/?count={count}")
    assert response.status_code == 400
    assert "count" in response.json()


def test_flow_types_is_a_plain_list_of_registered_flows(client: APIClient) -> None:
    body = client.get(f"{API}flow-types/").json()
    assert isinstance(body, list)
    by_path = {item["path"]: item for item in body}
    count_rows = by_path["tests.testapp.flows.CountRows"]
    assert count_rows["description"] == "Record one row per run and return how many rows there are."
    assert set(count_rows) == {"path", "name", "description", "configuration_schema", "steps"}
    assert by_path["tests.testapp.flows.ThreeSteps"]["steps"] == ["one", "two", "three"]
    with_schema = by_path["tests.testapp.flows.WithSchema"]["configuration_schema"]
    assert with_schema["required"] == ["batch_size"]


# -- starting runs -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_start_answers_202_with_the_pending_run_then_runs_it() -> None:
    flow = DataFlowFactory()
    user = grant(UserFactory(), "view_dataflow", "run_dataflow")
    api = APIClient()
    api.force_authenticate(user)
    response = api.post(f"{API}flows/{flow.pk}/start/", {}, format="json")
    assert response.status_code == 202
    body = response.json()
    run = DataFlowRun.objects.get()
    assert body["id"] == run.pk
    assert body["flow"] == flow.pk
    assert body["flow_name"] == flow.name
    assert body["trigger"] == RunTrigger.API
    assert body["triggered_by"] == user.pk
    # The in-process backend runs it once the answer has been sent: the test client closes
    # the response as a server does, and that runs it.
    assert body["status"] == RunStatus.PENDING
    assert run.status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_start_passes_the_input_to_the_flow() -> None:
    flow = DataFlowFactory(flow="tests.testapp.flows.EchoInput")
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{flow.pk}/start/", {"input": {"day": "monday"}}, format="json")
    assert response.status_code == 202
    assert response.json()["input"] == {"day": "monday"}
    assert DataFlowRun.objects.get().result == {"input": {"day": "monday"}}


def test_start_with_active_run_is_409(dummy_backend: object) -> None:
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{run.data_flow_id}/start/")
    assert response.status_code == 409
    assert "already has a pending or in-progress run" in response.json()["detail"]
    assert DataFlowRun.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [
        '{"input": [1, 2]}',
        '{"input": "x"}',
        "[1]",
        '{"input": {"k": 1e400}}',
        '{"input": {"\\u0000": 1}}',
    ],
)
def test_start_with_bad_input_is_400(body: str) -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{flow.pk}/start/", body, content_type="application/json")
    assert response.status_code == 400
    assert not DataFlowRun.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"rows": [1, {"name": "a\u0000"}]}, "NUL character"),
        ({"deep": nested(40)}, "nested deeper than 32 levels"),
        ({"rows": [1.5, [2, "ok"]]}, None),
    ],
)
def test_input_must_be_storable_json(value: Any, problem: str | None) -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    with override_settings(DATAFLOWS={"BACKEND": "django_dataflows.backends.dummy.DummyBackend"}):
        response = api.post(f"{API}flows/{flow.pk}/start/", {"input": value}, format="json")
    if problem is None:
        assert response.status_code == 202
    else:
        assert response.status_code == 400
        assert problem in response.json()["input"][0]


def test_a_model_validation_error_is_a_400_with_field_errors() -> None:
    from django.core.exceptions import ValidationError

    from django_dataflows.api.errors import exception_handler

    response = exception_handler(ValidationError({"input": ["Enter a JSON object."]}), {})
    assert response is not None
    assert (response.status_code, response.data) == (400, {"input": ["Enter a JSON object."]})


@pytest.mark.django_db(transaction=True)
def test_start_when_backend_refuses_is_503(settings: Any) -> None:
    settings.DATAFLOWS = {"BACKEND": "tests.test_api.RefusingBackend"}
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{flow.pk}/start/")
    assert response.status_code == 503
    assert "broker" in response.json()["detail"]


class RefusingBackend(BaseBackend):
    """A backend whose broker is down."""

    def enqueue(self, run: DataFlowRun) -> None:
        raise ConnectionError("the broker is down")


# -- runs ----------------------------------------------------------------------------------


def make_run(**fields: Any) -> DataFlowRun:
    run: DataFlowRun = DataFlowRunFactory(**fields)
    return run


def test_run_representation(client: APIClient) -> None:
    run = make_run(
        status=RunStatus.FAILED,
        error_message="boom",
        error_backtrace="Traceback ...",
        input={"day": "2026-01-01"},
        progress={"done": 1, "total": 2, "message": "half"},
        duration_ms=1500,
    )
    DataFlowRunStep.objects.create(run=run, position=2, name="load", status=StepStatus.FAILED)
    DataFlowRunStep.objects.create(
        run=run, position=1, name="extract", status=StepStatus.SUCCESS, result={"read": 3}
    )
    body = client.get(f"{API}runs/{run.pk}/").json()
    assert list(body) == [
        "id",
        "flow",
        "flow_name",
        "status",
        "trigger",
        "triggered_by",
        "scheduled_for",
        "created_at",
        "started_at",
        "ended_at",
        "duration_ms",
        "input",
        "result",
        "error_message",
        "attempt",
        "queue",
        "progress",
        "steps",
        "cancel_requested",
        "pause_requested",
        "updated_at",
        "cpu_time_ms",
        "db_queries",
        "late",
    ]
    assert [step["name"] for step in body["steps"]] == ["extract", "load"]
    assert body["steps"][0] == {
        "name": "extract",
        "position": 1,
        "status": "success",
        "started_at": None,
        "ended_at": None,
        "duration_ms": None,
        "result": {"read": 3},
        "error_message": "",
    }
    assert body["duration_ms"] == 1500
    assert body["cancel_requested"] is False
    assert body["input"] == {"day": "2026-01-01"}


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_fast_run_representation_is_what_the_fields_give(settings: Any, zone: str) -> None:
    settings.TIME_ZONE = zone
    run = make_run(
        status=RunStatus.FAILED,
        scheduled_for=timezone.now(),
        started_at=timezone.now(),
        ended_at=timezone.now() + timedelta(seconds=2),
        duration_ms=2000,
        error_message="boom",
        error_backtrace="Traceback",
        result={"rows": 1},
        input={"a": [1, 2]},
        cancel_requested_at=timezone.now(),
        triggered_by=UserFactory(),
    )
    DataFlowRunStep.objects.create(
        run=run,
        position=1,
        name="one",
        started_at=timezone.now() - timedelta(milliseconds=5),
        ended_at=timezone.now(),
        result=[1],
    )
    run = DataFlowRun.objects.select_related("data_flow").prefetch_related("steps").get()
    by_fields = serializers.ModelSerializer.to_representation(DataFlowRunSerializer(), run)
    fast = DataFlowRunSerializer.fast_representation(run)
    assert list(fast) == list(by_fields)
    assert fast == json.loads(json.dumps(by_fields))


def test_project_datetime_format_is_respected(client: APIClient) -> None:
    run = make_run()
    with override_settings(REST_FRAMEWORK={"DATETIME_FORMAT": "%Y"}):
        body = client.get(f"{API}runs/{run.pk}/").json()
    assert body["created_at"] == str(run.created_at.year)


def test_backtrace_is_shown_to_staff_only() -> None:
    run = make_run(status=RunStatus.FAILED, error_backtrace="Traceback (most recent call last)")
    staff = client_for(*VIEW_ALL, is_staff=True)
    assert staff.get(f"{API}runs/{run.pk}/").json()["error_backtrace"].startswith("Traceback")
    assert "error_backtrace" in staff.get(f"{API}runs/").json()["results"][0]
    others = client_for(*VIEW_ALL)
    assert "error_backtrace" not in others.get(f"{API}runs/{run.pk}/").json()
    assert "error_backtrace" not in others.get(f"{API}runs/").json()["results"][0]


def test_unknown_run_is_404_json(client: APIClient) -> None:
    for path in ("runs/999999/", "runs/abc/", "runs/99999999999999999999999/", "nothing-here/"):
        response = client.get(API + path)
        assert response.status_code == 404, path
        assert response.json() == {"detail": "Not found."} or "detail" in response.json()


def test_method_not_allowed_is_405_json(client: APIClient) -> None:
    run = make_run()
    response = client.put(f"{API}runs/{run.pk}/", {}, format="json")
    assert response.status_code == 405
    assert "detail" in response.json()


def test_status_view(client: APIClient) -> None:
    run = make_run(status=RunStatus.IN_PROGRESS, progress={"done": 5, "total": 10, "message": ""})
    body = client.get(f"{API}runs/{run.pk}/status/").json()
    assert set(body) == {"id", "status", "progress", "steps", "updated_at"}
    assert body["progress"]["done"] == 5


def test_soft_delete_hides_run_from_lists_and_stats() -> None:
    run = make_run(status=RunStatus.SUCCESS, duration_ms=10)
    api = client_for(*VIEW_ALL, "delete_dataflowrun")
    assert api.delete(f"{API}runs/{run.pk}/").status_code == 204
    run.refresh_from_db()
    assert run.deleted_at is not None  # kept for audit
    assert api.get(f"{API}runs/").json()["results"] == []
    assert api.get(f"{API}runs/{run.pk}/").status_code == 404
    assert api.get(f"{API}stats/").json()["total"] == 0


def test_soft_delete_of_active_run_is_409() -> None:
    run = make_run(status=RunStatus.IN_PROGRESS)
    api = client_for(*VIEW_ALL, "delete_dataflowrun")
    response = api.delete(f"{API}runs/{run.pk}/")
    assert response.status_code == 409
    assert "in_progress" in response.json()["detail"]
    run.refresh_from_db()
    assert run.deleted_at is None


@pytest.fixture
def runner() -> APIClient:
    return client_for(*VIEW_ALL, "run_dataflow")


def test_cancel_pending_run_ends_it(runner: APIClient, dummy_backend: object) -> None:
    run = make_run(status=RunStatus.PENDING)
    response = runner.post(f"{API}runs/{run.pk}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_cancel_running_run_requests_it(runner: APIClient) -> None:
    run = make_run(status=RunStatus.IN_PROGRESS, started_at=timezone.now())
    body = runner.post(f"{API}runs/{run.pk}/cancel/").json()
    assert (body["status"], body["cancel_requested"]) == (RunStatus.IN_PROGRESS, True)


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
def test_control_of_finished_run_is_409(runner: APIClient, action: str) -> None:
    run = make_run(status=RunStatus.SUCCESS)
    response = runner.post(f"{API}runs/{run.pk}/{action}/")
    assert response.status_code == 409
    assert f"Cannot {action} run {run.pk}" in response.json()["detail"]


def test_pause_running_run(runner: APIClient) -> None:
    run = make_run(status=RunStatus.IN_PROGRESS, started_at=timezone.now())
    response = runner.post(f"{API}runs/{run.pk}/pause/")
    assert response.status_code == 202
    assert response.json()["pause_requested"] is True
    run.refresh_from_db()
    assert run.pause_requested_at is not None


def test_pause_pending_run_is_409(runner: APIClient) -> None:
    run = make_run(status=RunStatus.PENDING)
    assert runner.post(f"{API}runs/{run.pk}/pause/").status_code == 409


def test_resume_paused_run(runner: APIClient, dummy_backend: object) -> None:
    run = make_run(status=RunStatus.PAUSED, started_at=timezone.now())
    response = runner.post(f"{API}runs/{run.pk}/resume/")
    assert response.status_code == 202
    assert response.json()["status"] == RunStatus.PENDING


def test_retry_answers_the_new_run(runner: APIClient, dummy_backend: object) -> None:
    run = make_run(status=RunStatus.FAILED, input={"day": 3})
    response = runner.post(f"{API}runs/{run.pk}/retry/")
    assert response.status_code == 202
    body = response.json()
    assert body["id"] != run.pk
    assert (body["trigger"], body["attempt"], body["input"]) == ("retry", 2, {"day": 3})
    assert DataFlowRun.objects.count() == 2


def test_retry_of_successful_run_is_409(runner: APIClient) -> None:
    run = make_run(status=RunStatus.SUCCESS)
    assert runner.post(f"{API}runs/{run.pk}/retry/").status_code == 409


def test_retry_while_flow_has_active_run_is_409(runner: APIClient) -> None:
    failed = make_run(status=RunStatus.FAILED)
    make_run(data_flow=failed.data_flow, status=RunStatus.PENDING)
    response = runner.post(f"{API}runs/{failed.pk}/retry/")
    assert response.status_code == 409
    assert DataFlowRun.objects.count() == 2


@pytest.mark.parametrize("action", ["pause", "resume", "retry"])
def test_run_control_needs_run_permission(client: APIClient, action: str) -> None:
    run = make_run(status=RunStatus.FAILED)
    assert client.post(f"{API}runs/{run.pk}/{action}/").status_code == 403


# -- run list: filters, ordering, pagination -------------------------------------------------


@pytest.fixture
def runs() -> dict[str, DataFlowRun]:
    now = timezone.now()
    alice = UserFactory(username="alice")
    first, second = DataFlowFactory(name="first"), DataFlowFactory(name="second")
    return {
        "old": make_run(
            data_flow=first,
            status=RunStatus.SUCCESS,
            trigger=RunTrigger.SCHEDULE,
            created_at=now - timedelta(days=3),
            started_at=now - timedelta(days=3),
            duration_ms=300,
        ),
        "failed": make_run(
            data_flow=first,
            status=RunStatus.FAILED,
            trigger=RunTrigger.API,
            triggered_by=alice,
            created_at=now - timedelta(days=2),
            started_at=now - timedelta(days=2),
            duration_ms=100,
        ),
        "timed_out": make_run(
            data_flow=second,
            status=RunStatus.TIMED_OUT,
            trigger=RunTrigger.MANUAL,
            created_at=now - timedelta(days=1),
        ),
        "new": make_run(
            data_flow=second,
            status=RunStatus.PENDING,
            trigger=RunTrigger.API,
            triggered_by=alice,
            created_at=now,
        ),
    }


def listed(client: APIClient, query: str = "") -> list[int]:
    response = client.get(f"{API}runs/?{query}")
    assert response.status_code == 200, response.json()
    return [run["id"] for run in response.json()["results"]]


def ids(runs: dict[str, DataFlowRun], *names: str) -> list[int]:
    return [runs[name].pk for name in names]


def test_runs_default_order_is_newest_first(
    client: APIClient, runs: dict[str, DataFlowRun]
) -> None:
    assert listed(client) == ids(runs, "new", "timed_out", "failed", "old")


def test_runs_filter_by_flow(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    assert listed(client, f"flow={runs['old'].data_flow_id}") == ids(runs, "failed", "old")
    assert listed(client, "flow=987654") == []


def test_runs_filter_by_status_list(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    assert listed(client, "status=failed") == ids(runs, "failed")
    assert listed(client, "status=failed,timed_out") == ids(runs, "timed_out", "failed")


def test_runs_filter_by_trigger_and_user(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    assert listed(client, "trigger=api") == ids(runs, "new", "failed")
    assert listed(client, f"triggered_by={runs['new'].triggered_by_id}") == ids(
        runs, "new", "failed"
    )


def test_runs_filter_by_creation_time(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    cutoff = (runs["failed"].created_at + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    assert listed(client, f"created_after={cutoff}") == ids(runs, "new", "timed_out")
    assert listed(client, f"created_before={cutoff}") == ids(runs, "failed", "old")


def test_runs_created_filters_accept_any_offset(
    client: APIClient, runs: dict[str, DataFlowRun]
) -> None:
    # Python allows offsets up to 23:59; PostgreSQL only to 15:59: compared in UTC.
    assert listed(client, "created_before=2588-03-03T14:47:14-21:11") == ids(
        runs, "new", "timed_out", "failed", "old"
    )
    assert listed(client, "created_after=2588-03-03T14:47:14%2B21:11") == []


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("created_before=9999-12-31T23:59:59-23:00", "created_before"),
        ("flow=99999999999999999999", "flow"),
        ("triggered_by=0", "triggered_by"),
        ("status=failed,exploded", "status"),
        ("trigger=telepathy", "trigger"),
        ("flow=abc", "flow"),
        ("triggered_by=me", "triggered_by"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-45", "created_before"),
        ("ordering=name", "ordering"),
        ("ordering=error_backtrace", "ordering"),
    ],
)
def test_runs_bad_filter_is_400_naming_it(
    client: APIClient, runs: dict[str, DataFlowRun], query: str, parameter: str
) -> None:
    response = client.get(f"{API}runs/?{query}")
    assert response.status_code == 400
    assert parameter in response.json()


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("created_at", ("old", "failed", "timed_out", "new")),
        ("-created_at", ("new", "timed_out", "failed", "old")),
        ("duration_ms", ("failed", "old", "timed_out", "new")),
        ("-duration_ms", ("old", "failed", "new", "timed_out")),
        ("started_at", ("old", "failed", "timed_out", "new")),
        ("-started_at", ("failed", "old", "new", "timed_out")),
        ("ended_at", ("old", "failed", "timed_out", "new")),
        ("-ended_at", ("failed", "old", "new", "timed_out")),
    ],
)
def test_runs_ordering(
    client: APIClient, runs: dict[str, DataFlowRun], ordering: str, expected: tuple[str, ...]
) -> None:
    # Empty values sort last both ways; runs without a value keep the id order.
    assert listed(client, f"ordering={ordering}") == ids(runs, *expected)


def test_runs_pages_by_cursor_newest_first(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    body = client.get(f"{API}runs/?page_size=2").json()
    assert "count" not in body
    assert [run["id"] for run in body["results"]] == ids(runs, "new", "timed_out")
    assert body["previous"] is None
    second = client.get(body["next"]).json()
    assert [run["id"] for run in second["results"]] == ids(runs, "failed", "old")
    assert second["next"] is None
    back = client.get(second["previous"]).json()
    assert [run["id"] for run in back["results"]] == ids(runs, "new", "timed_out")
    assert back["previous"] is None


def test_runs_cursor_pages_are_stable_under_inserts(
    client: APIClient, runs: dict[str, DataFlowRun]
) -> None:
    first = client.get(f"{API}runs/?page_size=2").json()
    make_run(status=RunStatus.SUCCESS, created_at=timezone.now() + timedelta(seconds=1))
    second = client.get(first["next"]).json()
    assert [run["id"] for run in second["results"]] == ids(runs, "failed", "old")


@pytest.mark.parametrize(
    "ordering",
    [
        "created_at",
        "-created_at",
        "started_at",
        "-started_at",
        "ended_at",
        "-ended_at",
        "duration_ms",
        "-duration_ms",
    ],
)
def test_runs_cursor_walks_every_ordering_forwards_and_back(
    client: APIClient, runs: dict[str, DataFlowRun], ordering: str
) -> None:
    everything = listed(client, f"ordering={ordering}")
    seen: list[int] = []
    pages = []
    url: str | None = f"{API}runs/?ordering={ordering}&page_size=1"
    while url:
        body = client.get(url).json()
        pages.append(body)
        seen += [run["id"] for run in body["results"]]
        url = body["next"]
    assert seen == everything
    back: list[int] = []
    url = pages[-1]["previous"]
    while url:
        body = client.get(url).json()
        back = [run["id"] for run in body["results"]] + back
        url = body["previous"]
    assert back == everything[:-1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("page_size=0", "page_size"),
        ("page_size=-1", "page_size"),
        ("page_size=abc", "page_size"),
        ("cursor=abc", "cursor"),
        ("ordering=created_at,duration_ms", "ordering"),
    ],
)
def test_runs_bad_page_parameters_are_400(
    client: APIClient, runs: dict[str, DataFlowRun], query: str, field: str
) -> None:
    response = client.get(f"{API}runs/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def cursor_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


def test_runs_tampered_cursor_is_400(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    token = cursor_of(client.get(f"{API}runs/?page_size=1").json()["next"])
    response = client.get(f"{API}runs/", {"page_size": 1, "cursor": token[:-3] + "abc"})
    assert response.status_code == 400
    assert response.json() == {"cursor": ["Invalid cursor."]}


def test_runs_cursor_of_another_filter_is_400(
    client: APIClient, runs: dict[str, DataFlowRun]
) -> None:
    token = cursor_of(client.get(f"{API}runs/?page_size=1").json()["next"])
    response = client.get(f"{API}runs/", {"page_size": 1, "status": "failed", "cursor": token})
    assert response.status_code == 400
    assert "another list" in response.json()["cursor"][0]


def test_runs_page_size_defaults_to_50_and_caps_at_500(client: APIClient) -> None:
    flow = DataFlowFactory()
    DataFlowRun.objects.bulk_create(
        DataFlowRun(data_flow=flow, status=RunStatus.SUCCESS, task_id=str(i)) for i in range(501)
    )
    assert len(client.get(f"{API}runs/").json()["results"]) == 50
    body = client.get(f"{API}runs/?page_size=100000").json()
    assert len(body["results"]) == 500
    assert body["next"] is not None


def test_runs_list_query_count_does_not_grow_with_the_page(client: APIClient) -> None:
    flow = DataFlowFactory()
    for _ in range(5):
        run = make_run(data_flow=flow, status=RunStatus.SUCCESS)
        DataFlowRunStep.objects.create(run=run, position=1, name="a")
    client.get(f"{API}runs/")  # the user's permissions are loaded once, then cached
    with CaptureQueriesContext(connection) as few:
        client.get(f"{API}runs/?flow={flow.pk}&status=success")
    for _ in range(20):
        make_run(data_flow=flow, status=RunStatus.SUCCESS)
    with CaptureQueriesContext(connection) as many:
        client.get(f"{API}runs/?flow={flow.pk}&status=success")
    assert len(many) == len(few) <= 4


# -- statistics ------------------------------------------------------------------------------


def test_stats_endpoints(client: APIClient, runs: dict[str, DataFlowRun]) -> None:
    body = client.get(f"{API}stats/").json()
    assert body["total"] == 4
    assert body["success"] == body["failed"] == body["timed_out"] == body["pending"] == 1
    assert body["success_rate"] == pytest.approx(33.33)
    assert body["p50_duration_ms"] == 200
    flow_id = runs["old"].data_flow_id
    per_flow = client.get(f"{API}flows/{flow_id}/stats/").json()
    assert per_flow["total"] == 2
    assert per_flow["success_rate"] == 50
    assert client.get(f"{API}stats/?flow={flow_id}").json() == per_flow
    since = (timezone.now() - timedelta(hours=36)).isoformat()
    assert client.get(f"{API}stats/", {"since": since}).json()["total"] == 2


@pytest.mark.parametrize("query", ["since=tomorrow", "flow=0", "flow=x", "flow=424242"])
def test_stats_bad_query_is_400(client: APIClient, query: str) -> None:
    response = client.get(f"{API}stats/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()


# -- schema and checks -----------------------------------------------------------------------


def test_schema_describes_every_endpoint(client: APIClient) -> None:
    response = client.get(f"{API}schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["servers"] == [{"url": "/dataflows/api"}]
    assert {
        "/flows/",
        "/flows/{id}/",
        "/flows/{id}/start/",
        "/flows/{id}/enable/",
        "/flows/{id}/disable/",
        "/flows/{id}/stats/",
        "/flows/{id}/upcoming/",
        "/flow-types/",
        "/runs/",
        "/runs/{id}/",
        "/runs/{id}/status/",
        "/runs/{id}/cancel/",
        "/runs/{id}/pause/",
        "/runs/{id}/resume/",
        "/runs/{id}/retry/",
        "/stats/",
    } <= set(schema["paths"])


def test_schema_needs_an_authenticated_user() -> None:
    assert APIClient().get(f"{API}schema/").status_code == 401
    assert APIClient().get(f"{API}schema/swagger-ui/").status_code == 401


def test_swagger_ui_page(client: APIClient) -> None:
    response = client.get(f"{API}schema/swagger-ui/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


def test_check_reports_api_include_without_its_apps(settings: Any) -> None:
    from django_dataflows.checks import check_api_apps

    assert check_api_apps() == []
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "django_filters"]
    errors = check_api_apps()
    assert [error.id for error in errors] == ["dataflows.E030"]
    assert "django_filters" in errors[0].msg


def test_check_is_silent_without_an_api_include(settings: Any) -> None:
    from django_dataflows.checks import check_api_apps

    settings.ROOT_URLCONF = "tests.urls_without_api"
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "rest_framework"]
    assert check_api_apps() == []


def test_prune_removes_soft_deleted_runs_whatever_their_age() -> None:
    kept = make_run(status=RunStatus.SUCCESS)
    gone = make_run(status=RunStatus.SUCCESS)
    gone.soft_delete()
    call_command("dataflows_prune", "--older-than", "30", stdout=_Sink(), stderr=_Sink())
    assert list(DataFlowRun.objects.values_list("pk", flat=True)) == [kept.pk]


class _Sink:
    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    ("since", "total"),
    [("2999-01-01T00:00:00Z", 0), ("1970-01-01T00:00:00Z", 2), ("2000-01-01T00:17:03+05:30", 2)],
)
def test_stats_since_in_the_future_or_before_any_rollup_answers_rightly(
    since: str, total: int
) -> None:
    make_run(status=RunStatus.SUCCESS, duration_ms=10)
    make_run(status=RunStatus.FAILED, duration_ms=30)
    api = client_for(*VIEW_ALL)
    response = api.get(f"{API}stats/", {"since": since})
    assert response.status_code == 200
    assert response.json()["total"] == total
