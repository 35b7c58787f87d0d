"""No input yields a 500: one storable-JSON rule at every door, and every API error is JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client, override_settings
from django.urls import reverse

from django_dataflows.models import DataFlow, DataFlowRun
from django_dataflows.runs.starting import trigger_run
from django_dataflows.validators import storable_json_problem
from tests.factories import DataFlowFactory, UserFactory
from tests.test_api import API, client_for

pytestmark = pytest.mark.django_db

DUMMY = {"BACKEND": "django_dataflows.backends.dummy.DummyBackend"}


def deep_text(depth: int, opener: str = '{"a": ', closer: str = "}") -> str:
    return opener * depth + "1" + closer * depth


#: JSON texts, as a client sends them, that no database can store as given.
UNSTORABLE_TEXTS = {
    "nul": '{"a": "x\\u0000y"}',
    "lone-surrogate": '{"a": "\\ud800"}',
    "lone-surrogate-key": '{"\\udfff": 1}',
    "half-an-emoji": '{"a": "\\ud83d"}',
    "objects-10000-deep": '{"a": ' + deep_text(10_000) + "}",
    "arrays-10000-deep": '{"a": ' + deep_text(10_000, "[", "]") + "}",
    "33-deep": '{"a": ' + deep_text(33) + "}",
}


# -- the rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": "x\x00"}, "NUL character"),
        ({"a\x00": 1}, "has a key that contains a NUL character"),
        ({"a": "\ud800"}, "lone surrogate"),
        ({"\ud83d": 1}, "has a key that contains a lone surrogate"),
        ({"a": [1.0, float("nan")]}, "not finite"),
        ({"a": float("inf")}, "not finite"),
        ({"a": "😀 ok", "b": [None, True, 1, 1.5, {"c": []}]}, None),
    ],
)
def test_the_rule_names_what_cannot_be_stored(value: Any, problem: str | None) -> None:
    found = storable_json_problem(value)
    assert (problem is None and found is None) or (problem and problem in (found or ""))


def test_the_rule_walks_any_depth_without_recursion() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert storable_json_problem(value) == "is nested deeper than 32 levels"


def test_the_rule_counts_bytes_once_encoded() -> None:
    assert storable_json_problem({"a": "é" * 10}, max_bytes=20) == (
        "is 29 bytes long; at most 20 are accepted"
    )
    assert storable_json_problem({"a": "é" * 10}, max_bytes=29) is None


@pytest.mark.parametrize("value", [{"a": "\x00"}, {"a": "\udc00"}, {"a": "x" * 300_000}])
def test_trigger_run_refuses_unstorable_input(value: Any) -> None:
    data_flow = DataFlowFactory()
    with pytest.raises(ValidationError):
        trigger_run(data_flow, input=value)
    assert not DataFlowRun.objects.exists()


@override_settings(DATAFLOWS={**DUMMY, "MAX_INPUT_BYTES": 1000})
def test_the_input_size_is_a_setting() -> None:
    data_flow = DataFlowFactory()
    with pytest.raises(ValidationError, match="at most 1,000 are accepted"):
        trigger_run(data_flow, input={"a": "x" * 1000})
    trigger_run(data_flow, input={"a": "x" * 900})


def test_a_flow_model_refuses_an_unstorable_or_oversized_configuration() -> None:
    data_flow = DataFlowFactory.build(configuration={"a": "\ud800"})
    with pytest.raises(ValidationError, match="lone surrogate"):
        data_flow.full_clean()
    data_flow.configuration = {"a": "x" * 300_000}
    with pytest.raises(ValidationError, match="262,144 are accepted"):
        data_flow.full_clean()


def test_a_deep_configuration_stored_around_validation_fails_its_run_cleanly() -> None:
    from django_dataflows.executor import FlowExecutor

    deep: Any = 1
    for _ in range(5000):
        deep = {"a": deep}
    data_flow = DataFlowFactory(flow="tests.testapp.flows.WithSchema")
    DataFlow.objects.filter(pk=data_flow.pk).update(configuration={"batch_size": 5})
    data_flow.configuration = {"batch_size": 5, "deep": deep}
    with pytest.raises(Exception, match="nested deeper than 32 levels"):
        FlowExecutor.execute(data_flow)


# -- the API -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(UNSTORABLE_TEXTS))
def test_the_api_start_refuses_unstorable_input_with_400_json(name: str) -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    body = '{"input": ' + UNSTORABLE_TEXTS[name] + "}"
    response = api.post(f"{API}flows/{flow.pk}/start/", body, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert not DataFlowRun.objects.exists()


@pytest.mark.parametrize("name", list(UNSTORABLE_TEXTS))
def test_the_api_refuses_an_unstorable_configuration_with_400_json(name: str) -> None:
    api = client_for("add_dataflow", "view_dataflow", "run_dataflow")
    body = (
        '{"name": "x", "flow": "tests.testapp.flows.CountRows", "run_interval": 60, '
        f'"configuration": {UNSTORABLE_TEXTS[name]}}}'
    )
    response = api.post(f"{API}flows/", body, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert not DataFlow.objects.exists()


def test_a_start_input_over_the_size_limit_is_400() -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(
        f"{API}flows/{flow.pk}/start/", {"input": {"a": "x" * 300_000}}, format="json"
    )
    assert response.status_code == 400
    assert "262,144 are accepted" in response.json()["input"][0]


def test_a_misspelled_key_in_the_start_body_is_refused_by_name() -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(
        f"{API}flows/{flow.pk}/start/", {"inptu": {"day": 1}, "input": {}}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["inptu"]
    assert not DataFlowRun.objects.exists()


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_djangos_upload_limit_is_413_json() -> None:
    flow = DataFlowFactory()
    api = client_for("view_dataflow", "run_dataflow")
    response = api.post(f"{API}flows/{flow.pk}/start/", {"input": {"a": "x" * 2000}}, format="json")
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


def test_a_post_without_its_slash_under_a_session_is_a_json_404_not_a_csrf_page() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    flow = DataFlowFactory()
    response = client.post(f"{API}flows/{flow.pk}/start", "{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_a_csrf_failure_on_an_api_view_is_json() -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    flow = DataFlowFactory()
    response = client.post(f"{API}flows/{flow.pk}/start/", "{}", content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


# -- the admin -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(UNSTORABLE_TEXTS))
def test_run_with_input_in_the_admin_refuses_unstorable_input(
    admin_client: Client, name: str
) -> None:
    data_flow = DataFlowFactory()
    url = reverse("admin:dataflows_dataflow_run_with_input", args=[data_flow.pk])
    response = admin_client.post(url, {"input": UNSTORABLE_TEXTS[name]})
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not DataFlowRun.objects.exists()


@pytest.mark.parametrize("name", list(UNSTORABLE_TEXTS))
def test_the_admin_flow_form_refuses_an_unstorable_configuration(
    admin_client: Client, name: str
) -> None:
    from tests.test_admin import ADD_FLOW, form_errors, valid_form

    response = admin_client.post(ADD_FLOW, valid_form(configuration=UNSTORABLE_TEXTS[name]))
    assert response.status_code == 200
    assert form_errors(response)["configuration"]
    assert not DataFlow.objects.exists()


def test_the_heartbeat_error_carries_detail_as_the_api_does(client: Client) -> None:
    response = client.get(reverse("dataflows:heartbeat"))
    assert response.status_code == 405
    body = response.json()
    assert body["detail"] == body["error"] == "Method not allowed; use POST."


def test_json_text_deeper_than_the_decoder_is_a_value_error() -> None:
    from django_dataflows.validators import load_json_text

    with pytest.raises(ValueError, match="nested deeper"):
        load_json_text(deep_text(100_000, "[", "]"))
    assert load_json_text(json.dumps({"a": [1]})) == {"a": [1]}
