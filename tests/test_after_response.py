"""The in-process backend never holds a request for a whole run: a start from the API or the
admin answers at once with the run ``pending``; the run executes once the response is sent."""

from __future__ import annotations

import datetime
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from django_dataflows import signals
from django_dataflows.backends import sync
from django_dataflows.backends.sync import run_after_response
from django_dataflows.conf import app_settings
from django_dataflows.models import DataFlowRun, RunStatus
from django_dataflows.scheduling import run_heartbeat
from tests.async_workers import WorkerProcess, wait_for
from tests.factories import DataFlowFactory, UserFactory
from tests.sse import SERVERS, server_process
from tests.testapp.models import Record

API = "/dataflows/api/"


@pytest.fixture
def request_in_flight() -> Iterator[None]:
    """Signals as a handler sends them, without closing connections (as the test client)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    request_started.send(sender=None)
    try:
        yield
    finally:
        sync._request.scope = None
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.django_db(transaction=True)
def test_outside_a_request_a_start_runs_at_once() -> None:
    data_flow = DataFlowFactory()

    deferring = run_after_response()
    run = data_flow.trigger_run()

    assert deferring is False
    assert run.status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_a_request_that_did_not_ask_runs_its_start_at_once(request_in_flight: None) -> None:
    run = DataFlowFactory().trigger_run()

    assert run.status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_a_deferred_run_waits_pending_until_the_response_is_closed(
    request_in_flight: None,
) -> None:
    deferring = run_after_response()
    run = DataFlowFactory().trigger_run()
    waiting = DataFlowRun.objects.get(pk=run.pk).status

    request_finished.send(sender=None)

    assert deferring is True
    assert (run.status, waiting) == (RunStatus.PENDING, RunStatus.PENDING)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_one_failing_deferred_run_never_stops_the_others(request_in_flight: None) -> None:
    run_after_response()
    broken = DataFlowFactory(flow="tests.testapp.flows.Explode").trigger_run()
    fine = DataFlowFactory().trigger_run()

    request_finished.send(sender=None)

    assert [DataFlowRun.objects.get(pk=run.pk).status for run in (broken, fine)] == [
        RunStatus.FAILED,
        RunStatus.SUCCESS,
    ]


@pytest.mark.django_db(transaction=True)
def test_deferred_runs_waiting_their_turn_are_renewed(
    request_in_flight: None, settings: Any
) -> None:
    # Every run takes longer than a quarter of PICKUP_TIMEOUT (zero here): the runs still
    # waiting are shown alive before each, so no heartbeat takes them back meanwhile.
    settings.DATAFLOWS = {"PICKUP_TIMEOUT": 0}
    run_after_response()
    first, second = (DataFlowFactory().trigger_run() for _ in range(2))
    long_ago = timezone.now() - datetime.timedelta(days=1)
    DataFlowRun.objects.filter(pk__in=[first.pk, second.pk]).update(activated_at=long_ago)
    seen_while_first_ran = []

    def look_at_second(sender: Any, run: DataFlowRun, **kwargs: Any) -> None:
        if run.pk == first.pk:
            seen_while_first_ran.append(DataFlowRun.objects.get(pk=second.pk).activated_at)

    signals.run_started.connect(look_at_second)
    try:
        request_finished.send(sender=None)
    finally:
        signals.run_started.disconnect(look_at_second)

    [waiting_since] = seen_while_first_ran
    assert waiting_since is not None
    assert waiting_since > long_ago
    assert DataFlowRun.objects.get(pk=second.pk).status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_a_deferred_run_whose_process_died_is_run_by_a_later_heartbeat(
    request_in_flight: None,
) -> None:
    run_after_response()
    run = DataFlowFactory().trigger_run()
    sync._request.scope = None  # the process died before its response was closed
    late = timezone.now() - datetime.timedelta(seconds=app_settings.PICKUP_TIMEOUT + 60)
    DataFlowRun.objects.filter(pk=run.pk).update(activated_at=late)

    result = run_heartbeat()

    run.refresh_from_db()
    assert (result.runs_redelivered, run.status) == (1, RunStatus.SUCCESS)


@pytest.mark.django_db(transaction=True)
def test_with_atomic_requests_the_run_still_waits_for_the_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hand-over happens when the request's transaction commits, still in the request.
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    data_flow = DataFlowFactory()
    api = APIClient()
    api.force_authenticate(UserFactory(is_superuser=True))

    response = api.post(f"{API}flows/{data_flow.pk}/start/", {}, format="json")

    assert (response.status_code, response.json()["status"]) == (202, RunStatus.PENDING)
    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_api_resume_answers_with_the_pending_run_then_runs_it() -> None:
    run = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps").create_pending_run()
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.PAUSED)
    api = APIClient()
    api.force_authenticate(UserFactory(is_superuser=True))

    response = api.post(f"{API}runs/{run.pk}/resume/")

    assert (response.status_code, response.json()["status"]) == (202, RunStatus.PENDING)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS


@pytest.mark.django_db(transaction=True)
def test_api_retry_answers_with_the_new_pending_run_then_runs_it() -> None:
    failed = DataFlowFactory().create_pending_run()
    DataFlowRun.objects.filter(pk=failed.pk).update(status=RunStatus.FAILED)
    api = APIClient()
    api.force_authenticate(UserFactory(is_superuser=True))

    response = api.post(f"{API}runs/{failed.pk}/retry/")

    assert (response.status_code, response.json()["status"]) == (202, RunStatus.PENDING)
    assert DataFlowRun.objects.get(pk=response.json()["id"]).status == RunStatus.SUCCESS


# -- through real servers ------------------------------------------------------------------


def _post(port: int, path: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=b"{}",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return response.status, json.loads(response.read())


def _get(port: int, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Token {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return dict(json.loads(response.read()))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", SERVERS)
def test_a_real_server_answers_202_before_a_long_run_ends_then_the_run_succeeds(
    kind: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.WaitsForGate", configuration={"gate": str(gate)}
    )
    token = Token.objects.create(user=UserFactory(is_superuser=True)).key
    process, port = server_process(kind, tmp_path / "server.log")
    server: WorkerProcess
    with process as server:
        status, body = _post(port, f"{API}flows/{data_flow.pk}/start/", token)

        # The answer came while the body could not have finished: its gate is still shut.
        assert (status, body["status"]) == (202, RunStatus.PENDING)
        assert not gate.exists()
        # Then the body starts, and the server still answers meanwhile.
        wait_for(
            lambda: Record.objects.filter(label="gate:waiting", run_id=body["id"]).exists(),
            timeout=60,
            what=f"the body of run {body['id']} to start ({server.name})",
        )
        live = _get(port, f"{API}runs/{body['id']}/status/", token)
        assert live["status"] == RunStatus.IN_PROGRESS
        gate.touch()
        wait_for(
            lambda: DataFlowRun.objects.get(pk=body["id"]).status == RunStatus.SUCCESS,
            timeout=60,
            what=f"run {body['id']} to succeed",
        )


@pytest.mark.django_db(transaction=True)
def test_the_admin_retry_button_answers_with_the_pending_run_then_runs_it(
    admin_client: Any,
) -> None:
    failed = DataFlowFactory().create_pending_run()
    DataFlowRun.objects.filter(pk=failed.pk).update(status=RunStatus.FAILED)

    response = admin_client.post(
        reverse("admin:dataflows_dataflowrun_control", args=[failed.pk, "retry"]), follow=True
    )

    retry = DataFlowRun.objects.exclude(pk=failed.pk).get()
    [message] = [str(m) for m in response.context["messages"]]
    assert message == f"Run {failed.pk} was retried as run {retry.pk} (pending)."
    assert retry.status == RunStatus.SUCCESS
