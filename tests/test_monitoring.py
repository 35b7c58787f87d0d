"""``health/`` for uptime monitors and ``metrics/`` for Prometheus."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_dataflows.models import DataFlowRun, Heartbeat, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory
from tests.sse import server_process

pytestmark = pytest.mark.django_db

TOKEN = "monitor-secret"


@pytest.fixture
def token(settings):
    settings.DATAFLOWS = {"HEARTBEAT_TOKEN": TOKEN}
    return TOKEN


def beat(seconds_ago: float = 0) -> None:
    Heartbeat.record(
        received_at=timezone.now() - timedelta(seconds=seconds_ago),
        source="http",
        client="127.0.0.1",
        result={},
    )


def overdue_flow(name: str = "nightly-export"):
    flow = DataFlowFactory(name=name, alert_after=60)
    # Not due either: a heartbeat leaves it overdue.
    type(flow).objects.filter(pk=flow.pk).update(
        created_at=timezone.now() - timedelta(hours=1),
        next_run_at=timezone.now() + timedelta(days=1),
    )
    return flow


# -- health -------------------------------------------------------------------------------


def test_health_is_ok_while_heartbeats_arrive_and_no_flow_is_overdue(client):
    beat(seconds_ago=5)
    DataFlowFactory(alert_after=3600)

    response = client.get("/dataflows/health/")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["flows_overdue"] == 0


def test_health_fails_before_any_heartbeat(client):
    response = client.get("/dataflows/health/")

    assert response.status_code == 503
    assert response.json()["reasons"] == ["No heartbeat has ever been received."]


def test_health_fails_when_the_last_heartbeat_is_older_than_the_limit(client, settings):
    settings.DATAFLOWS = {"HEALTH_MAX_HEARTBEAT_AGE": 60}
    beat(seconds_ago=300)

    response = client.get("/dataflows/health/")

    assert response.status_code == 503
    assert response.json()["status"] == "failing"
    assert response.json()["reasons"][0].startswith("No heartbeat for 300 seconds")


def test_anonymous_callers_learn_how_many_flows_are_overdue_but_not_which(client, token):
    beat()
    overdue_flow("nightly-export")

    response = client.get("/dataflows/health/")

    assert response.status_code == 503
    assert response.json()["flows_overdue"] == 1
    assert response.json()["reasons"] == ["1 flow is overdue."]
    assert "nightly-export" not in response.content.decode()


def test_the_heartbeat_token_reveals_the_overdue_flows_names(client, token):
    beat()
    overdue_flow("nightly-export")
    overdue_flow("hourly-feed")

    response = client.get("/dataflows/health/", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 503
    assert response.json()["overdue_flows"] == ["hourly-feed", "nightly-export"]
    assert response.json()["reasons"] == ["2 flows are overdue."]


def test_a_wrong_token_reveals_no_names(client, token):
    beat()
    overdue_flow("nightly-export")

    response = client.get("/dataflows/health/", headers={"Authorization": "Bearer wrong"})

    assert "overdue_flows" not in response.json()


def test_health_answers_only_get(client):
    response = client.post("/dataflows/health/")

    assert response.status_code == 405
    assert response.json() == {"error": "Method not allowed; use GET."}


# -- metrics ------------------------------------------------------------------------------


def scrape(client, **headers: str) -> dict[str, list]:
    response = client.get("/dataflows/metrics/", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(response.content.decode())
    }


def value(samples, name: str, **labels: str) -> float:
    [found] = [s.value for s in samples if s.name == name and s.labels == labels]
    return found


def test_a_scrape_without_the_token_is_refused_with_json(client, token):
    response = client.get("/dataflows/metrics/")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert "token" in response.json()["error"]


def test_metrics_answer_only_get(client, token):
    response = client.post("/dataflows/metrics/", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 405


def test_the_scrape_reports_every_family_from_the_database(client, token):
    flow = DataFlowFactory(name="orders", alert_after=86_400)
    type(flow).objects.filter(pk=flow.pk).update(created_at=timezone.now() - timedelta(hours=1))
    started = timezone.now() - timedelta(hours=2)
    for seconds in (1, 2, 3, 4):
        DataFlowRunFactory(
            data_flow=flow,
            status=RunStatus.SUCCESS,
            started_at=started,
            ended_at=started + timedelta(seconds=seconds),
            duration_ms=seconds * 1000,
        )
    DataFlowRunFactory(data_flow=flow, status=RunStatus.FAILED, duration_ms=10_000)
    DataFlowRunFactory(data_flow=flow, status=RunStatus.PENDING)
    DataFlowRun.objects.filter(status=RunStatus.PENDING).update(
        created_at=timezone.now() - timedelta(seconds=90)
    )
    quiet = DataFlowFactory(name="quiet")
    beat()

    families = scrape(client, Authorization=f"Bearer {TOKEN}")

    runs = families["dataflows_runs"]
    assert value(runs, "dataflows_runs_total", flow="orders", status="success") == 4
    assert value(runs, "dataflows_runs_total", flow="orders", status="failed") == 1
    # No zero samples: a flow has a series only for the statuses it has runs in.
    assert not [s for s in runs if s.labels["flow"] == "quiet"]
    assert {s.labels["status"] for s in runs} == {"success", "failed", "pending"}
    active = families["dataflows_runs_active"]
    assert value(active, "dataflows_runs_active", flow="orders", status="pending") == 1
    assert [s.labels["status"] for s in active] == ["pending"]
    durations = families["dataflows_run_duration_seconds"]
    # The quantiles come from the rollups' histograms: within 1 %.
    assert value(
        durations, "dataflows_run_duration_seconds", flow="orders", quantile="0.5"
    ) == pytest.approx(3, rel=0.01)
    assert value(durations, "dataflows_run_duration_seconds_count", flow="orders") == 5
    assert value(durations, "dataflows_run_duration_seconds_sum", flow="orders") == 20
    last = families["dataflows_flow_last_success_timestamp_seconds"]
    assert value(last, "dataflows_flow_last_success_timestamp_seconds", flow="orders") == (
        pytest.approx((started + timedelta(seconds=4)).timestamp(), abs=1)
    )
    assert not [s for s in last if s.labels == {"flow": quiet.name}]
    overdue = families["dataflows_flow_overdue"]
    assert value(overdue, "dataflows_flow_overdue", flow="orders") == 0  # succeeded recently
    assert not [s for s in overdue if s.labels == {"flow": "quiet"}]  # no alert_after
    heartbeat = families["dataflows_heartbeat_last_timestamp_seconds"]
    assert value(heartbeat, "dataflows_heartbeat_last_timestamp_seconds") == pytest.approx(
        timezone.now().timestamp(), abs=60
    )
    pending = families["dataflows_pending_oldest_age_seconds"]
    assert value(pending, "dataflows_pending_oldest_age_seconds") >= 90


def test_an_overdue_flow_shows_as_one(client, token):
    overdue_flow("stale")

    families = scrape(client, Authorization=f"Bearer {TOKEN}")

    assert value(families["dataflows_flow_overdue"], "dataflows_flow_overdue", flow="stale") == 1


def test_a_scrape_costs_the_same_queries_for_few_and_many_runs(client, token):
    flow = DataFlowFactory()
    DataFlowRunFactory(data_flow=flow, duration_ms=5)
    with CaptureQueriesContext(connection) as few:
        scrape(client, Authorization=f"Bearer {TOKEN}")
    DataFlowRunFactory.create_batch(40, data_flow=flow, duration_ms=7)
    DataFlowRunFactory.create_batch(5, data_flow=DataFlowFactory(), duration_ms=7)
    with CaptureQueriesContext(connection) as many:
        scrape(client, Authorization=f"Bearer {TOKEN}")

    assert len(many) == len(few) <= 8


# -- a real server ------------------------------------------------------------------------


def get(port: int, path: str, token: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_server_answers_monitors_as_the_heartbeat_arrives(tmp_path: Path):
    overdue_flow("stale")
    settings = json.dumps({"HEARTBEAT_TOKEN": TOKEN})
    process, port = server_process(
        "gunicorn", tmp_path / "server.log", DATAFLOWS_TEST_SETTINGS=settings
    )
    with process:
        status, _type, body = get(port, "/dataflows/health/")
        assert status == 503
        assert json.loads(body)["reasons"][0] == "No heartbeat has ever been received."
        assert "stale" not in body

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/dataflows/heartbeat/",
            b"",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            assert response.status == 200
        status, _type, body = get(port, "/dataflows/health/", token=TOKEN)
        assert (status, json.loads(body)["overdue_flows"]) == (503, ["stale"])

        status, content_type, body = get(port, "/dataflows/metrics/")
        assert (status, content_type) == (401, "application/json")
        status, content_type, body = get(port, "/dataflows/metrics/", token=TOKEN)
        assert status == 200
        assert content_type.startswith("text/plain")
        names = {family.name for family in text_string_to_metric_families(body)}
        assert "dataflows_heartbeat_last_timestamp_seconds" in names
        assert "dataflows_runs" in names
