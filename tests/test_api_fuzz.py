"""Schemathesis against the API's own OpenAPI schema: no server error, no schema violation.

In-process (Django's WSGI handler), as a staff user with a token, over real flows and
runs of every status. Each generated request runs in a savepoint that is rolled back, so
every case sees the same data (a DELETE does not empty the table for the cases after it).
Path ids are drawn mostly from the real rows, so the cases reach the views' logic rather
than stopping at a 404. Generation is derandomized: CI runs the same cases every time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from django_dataflows.models import DataFlowRun, DataFlowRunStep, RunStatus, StepStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

#: Cases per operation and generation mode: about 1,100 requests over the 21 operations.
POSITIVE_CASES = 34
NEGATIVE_CASES = 18
MINIMUM_CASES = 1000
API = "/dataflows/api"


@contextmanager
def keeping_the_test_connection() -> Iterator[None]:
    """Keep the test's connection open while Django's WSGI handler serves requests.

    The handler closes the connection around each request, which inside the test's
    transaction would end it; Django's own test client disconnects the same receiver (and
    connects it again after each request, so use no test client inside this block).
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def real_data() -> dict[str, list[int]]:
    """Flows and runs of every kind, so that the views have something to work on."""
    now = timezone.now()
    flows = [
        DataFlowFactory(flow="tests.testapp.flows.CountRows"),
        DataFlowFactory(flow="tests.testapp.flows.WithSchema", configuration={"batch_size": 5}),
        DataFlowFactory(flow="tests.testapp.flows.ThreeSteps", enabled=False),
        DataFlowFactory(flow="gone.flows.Removed"),
    ]
    runs: list[DataFlowRun] = []
    for index, status in enumerate(RunStatus.values):
        run = DataFlowRunFactory(
            data_flow=flows[index % 3]
            if status in {"pending", "in_progress", "paused"}
            else flows[0],
            status=status,
            created_at=now - timedelta(hours=index),
            started_at=now - timedelta(hours=index),
            ended_at=None if status in {"pending", "in_progress", "paused"} else now,
            duration_ms=None if status in {"pending", "in_progress", "paused"} else 1000 * index,
            error_message="boom" if status == RunStatus.FAILED else "",
            error_backtrace="Traceback ..." if status == RunStatus.FAILED else "",
            input={"day": index},
            progress={"done": index, "total": 10, "message": "working"},
        )
        DataFlowRunStep.objects.create(run=run, position=1, name="one", status=StepStatus.SUCCESS)
        runs.append(run)
    runs[-1].soft_delete()
    return {"flows": [flow.pk for flow in flows], "runs": [run.pk for run in runs]}


def load_schema(token: str) -> Any:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.get(f"{API}/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = schemathesis.openapi.from_dict(response.json())
    schema.app = get_wsgi_application()
    return schema


def case_strategy(
    operation: Any, mode: schemathesis.GenerationMode, ids: dict[str, list[int]]
) -> Any:
    if "{id}" not in operation.path:
        return operation.as_strategy(generation_mode=mode)
    rows = ids["runs"] if operation.path.startswith("/runs/") else ids["flows"]
    with_real_ids = [
        operation.as_strategy(generation_mode=mode, path_parameters={"id": pk}) for pk in rows
    ]
    # Mostly real rows; sometimes whatever the schema allows (unknown ids, odd values).
    return st.one_of(*with_real_ids, operation.as_strategy(generation_mode=mode))


def test_api_never_errors_and_always_matches_its_schema() -> None:
    user = UserFactory(is_staff=True, is_superuser=True)
    token = Token.objects.create(user=user).key
    ids = real_data()
    schema = load_schema(token)
    headers = {"Authorization": f"Token {token}"}
    sent: Counter[str] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 21

    with keeping_the_test_connection():
        for operation in operations:
            fuzz(operation, ids, headers, sent)

    print(f"schemathesis: {sum(sent.values())} cases over {len(sent)} operations")
    assert set(sent) == {operation.label for operation in operations}
    assert sum(sent.values()) >= MINIMUM_CASES, sent


def fuzz(
    operation: Any, ids: dict[str, list[int]], headers: dict[str, str], sent: Counter[str]
) -> None:
    """Send one operation's generated cases, valid ones then invalid ones."""
    for mode, cases in (
        (schemathesis.GenerationMode.POSITIVE, POSITIVE_CASES),
        (schemathesis.GenerationMode.NEGATIVE, NEGATIVE_CASES),
    ):

        @settings(
            max_examples=cases,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=case_strategy(operation, mode, ids))
        def send(case: Any) -> None:
            with transaction.atomic():
                response = case.call(headers=headers)
                transaction.set_rollback(True)
            sent[operation.label] += 1
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )

        try:
            send()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode == schemathesis.GenerationMode.NEGATIVE


# -- hostile bodies: what the schema's own generators never send -------------------------

#: Strings with the characters databases refuse: NUL, lone surrogates (half an emoji).
hostile_text = st.text(
    alphabet=st.sampled_from(["a", "é", "😀", "\x00", "\ud800", "\udfff", "\ud83d"]), max_size=6
)


def _nest(depth: int, leaf: Any, as_list: bool) -> str:
    inner = json.dumps(leaf)
    return (
        ("[" * depth + inner + "]" * depth) if as_list else ('{"a": ' * depth + inner + "}" * depth)
    )


@st.composite
def hostile_json_text(draw: Any) -> str:
    """A JSON object as text: deep (up to 20,000 levels), huge, or with unstorable strings."""
    kind = draw(st.sampled_from(["deep", "huge", "strings", "numbers"]))
    if kind == "deep":
        depth = draw(st.sampled_from([31, 33, 900, 1_100, 20_000]))
        return '{"x": ' + _nest(depth, draw(hostile_text), draw(st.booleans())) + "}"
    if kind == "huge":
        return json.dumps({"x": "y" * draw(st.sampled_from([262_100, 262_200, 1_000_000]))})
    if kind == "numbers":
        return '{"x": ' + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])) + "}"
    key, value = draw(hostile_text), draw(hostile_text)
    return json.dumps({key: value, "list": [value]})


def test_hostile_bodies_answer_json_never_a_server_error() -> None:
    flow = DataFlowFactory(flow="tests.testapp.flows.WithSchema", configuration={"batch_size": 5})
    user = UserFactory(is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_authenticate(user)
    targets = [
        ("post", f"{API}/flows/{flow.pk}/start/", '{{"input": {}}}'),
        (
            "post",
            f"{API}/flows/",
            '{{"name": "n", "flow": "tests.testapp.flows.CountRows", '
            '"run_interval": 60, "configuration": {}}}',
        ),
        ("patch", f"{API}/flows/{flow.pk}/", '{{"configuration": {}}}'),
    ]
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=hostile_json_text(), target=st.sampled_from(targets))
    def send(body: str, target: tuple[str, str, str]) -> None:
        method, url, template = target
        with transaction.atomic():
            response = getattr(client, method)(
                url, template.format(body), content_type="application/json"
            )
            transaction.set_rollback(True)
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.content[:300]
        assert response["Content-Type"] == "application/json"

    send()
    print(f"hostile bodies: {dict(statuses)}")
    assert not DataFlowRun.objects.exists()


def test_a_view_only_user_gets_exactly_what_the_schema_says() -> None:
    """No backtrace for non-staff users, and the schema does not promise one."""
    viewer = UserFactory()
    viewer.user_permissions.set(
        Permission.objects.filter(codename__in=["view_dataflow", "view_dataflowrun"])
    )
    token = Token.objects.create(user=viewer).key
    ids = real_data()
    schema = load_schema(token)
    headers = {"Authorization": f"Token {token}"}
    sent: Counter[str] = Counter()
    reads = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().method.upper() == "GET" and result.ok().path.startswith("/runs/")
    ]
    assert reads
    with keeping_the_test_connection():
        for operation in reads:
            read_as_viewer(operation, ids, headers, sent)
    assert set(sent) == {operation.label for operation in reads}


def read_as_viewer(
    operation: Any, ids: dict[str, list[int]], headers: dict[str, str], sent: Counter[str]
) -> None:
    @settings(
        max_examples=8,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=case_strategy(operation, schemathesis.GenerationMode.POSITIVE, ids))
    def send(case: Any) -> None:
        response = case.call(headers=headers)
        sent[operation.label] += 1
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        assert "error_backtrace" not in response.text

    send()
