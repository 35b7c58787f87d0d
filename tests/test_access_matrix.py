"""Who may reach what: every API endpoint and admin page, walked by every kind of user.

One table: a row per endpoint (or admin page), the status each role gets, and for every
response the rule that it carries nothing of a flow the role may not see (name, input,
result, error, backtrace). A route of the API that is missing from the table fails
:func:`test_every_api_route_is_in_the_table`: a new endpoint must be added here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from django_dataflows import audit
from django_dataflows.models import AuditAction, AuditSource, DataFlow, DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

API = "/dataflows/api/"
ADMIN = "/admin/dataflows/"

ROLES = (
    "anonymous",
    "no_permission",
    "owner_a",
    "owner_b",
    "viewer",
    "runner",
    "staff",
    "superuser",
)

#: What each flow's owner alone (and users with the model permissions) may ever read.
SECRETS = {
    "a": ("alpha-secret-flow", "alpha-input", "alpha-result", "alpha-error", "alpha-backtrace"),
    "b": ("bravo-secret-flow", "bravo-input", "bravo-result", "bravo-error", "bravo-backtrace"),
}

#: The secrets each role must never receive.
FORBIDDEN = {
    "anonymous": SECRETS["a"] + SECRETS["b"],
    "no_permission": SECRETS["a"] + SECRETS["b"],
    "owner_a": SECRETS["b"],
    "owner_b": SECRETS["a"],
    "viewer": (),
    "runner": (),
    "staff": SECRETS["a"] + SECRETS["b"],
    "superuser": (),
}


@dataclass
class World:
    flow_a: DataFlow
    flow_b: DataFlow
    run_a: DataFlowRun
    users: dict[str, Any]


def _user(name: str, *codenames: str, **fields: Any) -> Any:
    user = UserFactory(username=name, **fields)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def _flow(key: str, owner: Any) -> tuple[DataFlow, DataFlowRun]:
    name, run_input, result, error, backtrace = SECRETS[key]
    data_flow = DataFlowFactory(name=name, owner=owner, description=f"{name} description")
    run = DataFlowRunFactory(
        data_flow=data_flow,
        status=RunStatus.FAILED,
        input={"token": run_input},
        result={"value": result},
        error_message=error,
        error_backtrace=backtrace,
    )
    return data_flow, run


@pytest.fixture
def world() -> World:
    users = {
        "no_permission": _user("no_permission"),
        "owner_a": _user("owner_a", is_staff=True),
        "owner_b": _user("owner_b", is_staff=True),
        "viewer": _user("viewer", "view_dataflow", "view_dataflowrun", is_staff=True),
        "runner": _user(
            "runner", "view_dataflow", "view_dataflowrun", "run_dataflow", is_staff=True
        ),
        "staff": _user("staff", is_staff=True),
        "superuser": _user("superuser", is_staff=True, is_superuser=True),
    }
    flow_a, run_a = _flow("a", users["owner_a"])
    flow_b, run_b = _flow("b", users["owner_b"])
    with transaction.atomic():
        for run in (run_a, run_b):
            audit.record(AuditAction.RUN_STARTED, source=AuditSource.API, run=run)
    return World(flow_a, flow_b, run_a, users)


@dataclass(frozen=True)
class Row:
    """One endpoint: its URL name (API) or page, how to call it, and each role's status."""

    name: str
    method: str
    path: Callable[[World], str]
    statuses: tuple[int, ...]
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        assert len(self.statuses) == len(ROLES), self.name


def flow_a(suffix: str = "") -> Callable[[World], str]:
    return lambda world: f"{API}flows/{world.flow_a.pk}/{suffix}"


def run_a(suffix: str = "") -> Callable[[World], str]:
    return lambda world: f"{API}runs/{world.run_a.pk}/{suffix}"


def fixed(path: str) -> Callable[[World], str]:
    return lambda world: path


#                anon  none  own_a own_b view  run   staff super
SEE_LIST = (401, 403, 200, 200, 200, 200, 403, 200)
SEE_A = (401, 403, 200, 404, 200, 200, 403, 200)
EDIT_A = (401, 403, 200, 404, 403, 403, 403, 200)
START_A = (401, 403, 202, 404, 403, 202, 403, 202)
CONTROL_A = (401, 403, 409, 404, 403, 409, 403, 409)  # run A has failed: 409 for those allowed
DELETE = (401, 403, 403, 403, 403, 403, 403, 204)
SIGNED_IN = (401, 200, 200, 200, 200, 200, 200, 200)

NEW_FLOW = {"name": "gamma", "flow": "tests.testapp.flows.CountRows", "run_interval": 60}

API_ROWS = (
    Row("flow-list", "get", fixed(f"{API}flows/"), SEE_LIST),
    Row(
        "flow-list",
        "post",
        fixed(f"{API}flows/"),
        (401, 403, 403, 403, 403, 403, 403, 201),
        NEW_FLOW,
    ),
    Row("flow-detail", "get", flow_a(), SEE_A),
    Row("flow-detail", "patch", flow_a(), EDIT_A, {"description": "changed"}),
    Row("flow-detail", "delete", flow_a(), DELETE),
    Row("flow-start", "post", flow_a("start/"), START_A, {}),
    Row("flow-enable", "post", flow_a("enable/"), EDIT_A),
    Row("flow-disable", "post", flow_a("disable/"), EDIT_A),
    Row("flow-stats", "get", flow_a("stats/"), SEE_A),
    Row("flow-upcoming", "get", flow_a("upcoming/"), SEE_A),
    Row(
        "flow-backfill",
        "post",
        flow_a("backfill/"),
        START_A,
        {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T01:00:00Z"},
    ),
    Row("run-list", "get", fixed(f"{API}runs/"), SEE_LIST),
    Row("run-detail", "get", run_a(), SEE_A),
    Row("run-detail", "delete", run_a(), DELETE),
    Row("run-status", "get", run_a("status/"), SEE_A),
    Row("run-logs", "get", run_a("logs/"), SEE_A),
    Row("run-cancel", "post", run_a("cancel/"), CONTROL_A),
    Row("run-pause", "post", run_a("pause/"), CONTROL_A),
    Row("run-resume", "post", run_a("resume/"), CONTROL_A),
    Row("run-retry", "post", run_a("retry/"), START_A),
    Row("flow-types", "get", fixed(f"{API}flow-types/"), SEE_LIST),
    Row("stats", "get", fixed(f"{API}stats/"), SEE_LIST),
    Row(
        "stats",
        "get",
        lambda world: f"{API}stats/?flow={world.flow_a.pk}",
        (401, 403, 200, 400, 200, 200, 403, 200),
    ),
    # Backfills need their model permission (superusers here); no backfill exists: 404.
    Row(
        "backfill-list", "get", fixed(f"{API}backfills/"), (401, 403, 403, 403, 403, 403, 403, 200)
    ),
    Row(
        "backfill-detail",
        "get",
        fixed(f"{API}backfills/999999/"),
        (401, 403, 403, 403, 403, 403, 403, 404),
    ),
    Row(
        "backfill-cancel",
        "post",
        fixed(f"{API}backfills/999999/cancel/"),
        (401, 403, 403, 403, 403, 403, 403, 404),
    ),
    Row("audit-list", "get", fixed(f"{API}audit/"), (401, 403, 200, 200, 200, 200, 200, 200)),
    Row("schema", "get", fixed(f"{API}schema/"), SIGNED_IN),
    Row("swagger-ui", "get", fixed(f"{API}schema/swagger-ui/"), SIGNED_IN),
    Row("run-events", "get", run_a("events/"), (401, 404, 200, 404, 200, 200, 404, 200)),
    Row("events", "get", fixed(f"{API}events/"), SEE_LIST),
    Row(
        "events",
        "get",
        lambda world: f"{API}events/?flow={world.flow_a.pk}",
        (401, 403, 200, 400, 200, 200, 403, 200),
    ),
)

#                anon  none  own_a own_b view  run   staff super
ADMIN_LIST = (302, 302, 200, 200, 200, 200, 403, 200)
ADMIN_ROWS = (
    Row("admin index", "get", fixed("/admin/"), (302, 302, 200, 200, 200, 200, 200, 200)),
    Row("flow changelist", "get", fixed(f"{ADMIN}dataflow/"), ADMIN_LIST),
    Row(
        "flow change page",
        "get",
        lambda world: f"{ADMIN}dataflow/{world.flow_a.pk}/change/",
        (302, 302, 200, 302, 200, 200, 403, 200),
    ),
    Row(
        "flow run-with-input page",
        "get",
        lambda world: f"{ADMIN}dataflow/{world.flow_a.pk}/run/",
        (302, 302, 200, 404, 403, 200, 404, 200),
    ),
    Row("run changelist", "get", fixed(f"{ADMIN}dataflowrun/"), ADMIN_LIST),
    Row(
        "run change page",
        "get",
        lambda world: f"{ADMIN}dataflowrun/{world.run_a.pk}/change/",
        (302, 302, 200, 302, 200, 200, 403, 200),
    ),
    Row(
        "run control",
        "post",
        lambda world: f"{ADMIN}dataflowrun/{world.run_a.pk}/control/retry/",
        (302, 302, 302, 404, 403, 302, 404, 302),
    ),
    Row("live runs", "get", fixed(f"{ADMIN}dataflowrun/live/"), ADMIN_LIST),
    Row("dashboard", "get", fixed(f"{ADMIN}dataflowrun/dashboard/"), ADMIN_LIST),
    Row(
        "audit changelist",
        "get",
        fixed(f"{ADMIN}auditentry/"),
        (302, 302, 200, 200, 403, 403, 403, 200),
    ),
)


def _client(world: World, role: str) -> APIClient:
    client = APIClient()
    if role != "anonymous":
        client.force_login(world.users[role])
    return client


def _body(response: Any) -> str:
    if not getattr(response, "streaming", False):
        return response.content.decode()
    chunks = iter(response.streaming_content)
    try:
        return next(chunks).decode()  # the snapshot: what the stream opens with
    finally:
        response.close()


def _walk(row: Row, role: str, world: World) -> None:
    client = _client(world, role)
    call = getattr(client, row.method)
    kwargs: dict[str, Any] = {}
    if row.data is not None:
        kwargs = {"data": row.data, "format": "json"} if row.path(world).startswith(API) else {}
    response = call(row.path(world), **kwargs)
    expected = row.statuses[ROLES.index(role)]
    body = _body(response)
    assert response.status_code == expected, (row.name, row.method, role, body[:300])
    leaked = [secret for secret in FORBIDDEN[role] if secret in body]
    assert not leaked, (row.name, row.method, role, leaked)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", API_ROWS, ids=lambda row: f"{row.method} {row.name}")
def test_api_access(row: Row, role: str, world: World) -> None:
    _walk(row, role, world)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("row", ADMIN_ROWS, ids=lambda row: f"{row.method} {row.name}")
def test_admin_access(row: Row, role: str, world: World) -> None:
    _walk(row, role, world)


def _route_names(patterns: list[Any], namespace: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}:{pattern.namespace}" if pattern.namespace else namespace
            names |= _route_names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(f"{namespace}:{pattern.name}".lstrip(":"))
    return names


def test_every_api_route_is_in_the_table() -> None:
    routes = {
        name.rsplit(":", 1)[1]
        for name in _route_names(get_resolver().url_patterns)
        if name.startswith(("dataflows_api:", "dataflows_live:"))
    }
    assert routes, "the API's routes were not found"
    assert routes - {row.name for row in API_ROWS} == set()
