"""POST /dataflows/heartbeat/: methods, IP allowlist, token, proxies, body, answers."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from django_dataflows.models import DataFlowRun, RunStatus
from tests.factories import DataFlowFactory

pytestmark = pytest.mark.django_db

URL = "/dataflows/heartbeat/"
TOKEN = "s3cret-" + "t" * 40


@pytest.fixture
def due(db):
    return DataFlowFactory()


def post(client, remote="127.0.0.1", **extra):
    return client.post(URL, REMOTE_ADDR=remote, **extra)


def assert_refused(response, status):
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"detail", "error"}
    assert not DataFlowRun.objects.exists()


def test_the_url_is_named():
    assert reverse("dataflows:heartbeat") == URL


def test_a_loopback_client_triggers_due_flows_by_default(client, due):
    response = post(client)

    assert response.status_code == 200
    body = response.json()
    assert {
        k: body[k]
        for k in ("flows_due", "flows_triggered", "flows_skipped", "flows_failed", "runs_timed_out")
    } == {
        "flows_due": 1,
        "flows_triggered": 1,
        "flows_skipped": 0,
        "flows_failed": 0,
        "runs_timed_out": 0,
    }
    assert body["timestamp"]
    assert due.runs.get().status == RunStatus.SUCCESS
    assert "no-cache" in response["Cache-Control"]


def test_ipv6_loopback_is_loopback(client, due):
    assert post(client, remote="::1").status_code == 200


def test_without_token_or_allowlist_other_clients_are_refused(client, due):
    assert_refused(post(client, remote="203.0.113.9"), 403)


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_are_refused_with_405(client, due, method):
    response = getattr(client, method)(URL, REMOTE_ADDR="127.0.0.1")

    assert_refused(response, 405)
    assert response["Allow"] == "POST"


def test_no_csrf_token_is_needed():
    from django.test import Client

    assert Client(enforce_csrf_checks=True).post(URL, REMOTE_ADDR="127.0.0.1").status_code == 200


# -- token --------------------------------------------------------------------------


@pytest.fixture
def with_token(settings):
    settings.DATAFLOWS = {"HEARTBEAT_TOKEN": TOKEN}


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"bearer {TOKEN}"},
        {"HTTP_X_HEARTBEAT_TOKEN": TOKEN},
    ],
)
def test_a_valid_token_is_accepted_from_anywhere(client, due, with_token, headers):
    response = post(client, remote="198.51.100.20", **headers)

    assert response.status_code == 200
    assert response.json()["flows_triggered"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer wrong"},
        {"HTTP_AUTHORIZATION": "Bearer "},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"},
        {"HTTP_X_HEARTBEAT_TOKEN": ""},
        {"HTTP_X_HEARTBEAT_TOKEN": TOKEN[:-1]},
    ],
)
def test_a_missing_or_wrong_token_is_refused_with_401(client, due, with_token, headers):
    response = post(client, **headers)

    assert_refused(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "(no token was sent)"),
        ({"HTTP_AUTHORIZATION": "Bearer "}, "(no token was sent)"),
        ({"HTTP_AUTHORIZATION": "Bearer wrong"}, "(the token sent is wrong)"),
        ({"HTTP_X_HEARTBEAT_TOKEN": TOKEN[:-1]}, "(the token sent is wrong)"),
    ],
)
def test_the_log_says_whether_the_token_was_missing_or_wrong_and_the_answer_does_not(
    client, due, with_token, headers, detail, caplog
):
    caplog.set_level(logging.INFO, logger="django_dataflows.heartbeat")

    response = post(client, **headers)

    [refused] = [r for r in caplog.records if r.name == "django_dataflows.heartbeat"]
    assert refused.getMessage().endswith(detail)
    assert b"token was sent" not in response.content
    assert b"wrong" not in response.content


@pytest.mark.parametrize("configured", ["", "   "])
def test_a_token_configured_as_empty_lets_nobody_in(client, due, settings, configured):
    settings.DATAFLOWS = {"HEARTBEAT_TOKEN": configured}

    # A misconfiguration the checks report (dataflows.E008): a JSON 503 naming the setting.
    for response in (
        post(client),
        post(client, HTTP_AUTHORIZATION="Bearer "),
        post(client, HTTP_X_HEARTBEAT_TOKEN=configured),
    ):
        assert_refused(response, 503)
        assert "DATAFLOWS['HEARTBEAT_TOKEN'] is empty" in response.json()["error"]


# -- allowlist ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "status"),
    [
        ("10.1.2.3", 200),
        ("10.255.255.255", 200),
        ("11.0.0.1", 403),
        ("192.0.2.7", 200),
        ("192.0.2.8", 403),
        ("2001:db8::42", 200),
        ("2001:db9::1", 403),
        ("::ffff:10.9.9.9", 200),
        ("127.0.0.1", 403),
    ],
)
def test_the_allowlist_takes_addresses_and_networks(client, due, settings, remote, status):
    settings.DATAFLOWS = {"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]}

    response = post(client, remote=remote)

    assert response.status_code == status
    assert DataFlowRun.objects.exists() == (status == 200)


def test_ip_is_checked_before_the_token(client, due, settings):
    settings.DATAFLOWS = {"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"], "HEARTBEAT_TOKEN": TOKEN}

    assert_refused(post(client, remote="11.0.0.1"), 403)
    assert_refused(post(client, remote="10.0.0.1"), 401)
    assert post(client, remote="10.0.0.1", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_a_client_without_an_address_is_refused(client, due, settings):
    settings.DATAFLOWS = {"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"]}

    assert_refused(post(client, remote=""), 403)


# -- proxies ------------------------------------------------------------------------


def test_forwarded_for_from_an_untrusted_peer_is_ignored(client, due, settings):
    settings.DATAFLOWS = {"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"]}

    response = post(client, remote="203.0.113.5", HTTP_X_FORWARDED_FOR="10.0.0.1")

    assert_refused(response, 403)


def test_a_spoofed_loopback_forwarded_for_does_not_open_the_default(client, due):
    assert_refused(post(client, remote="203.0.113.5", HTTP_X_FORWARDED_FOR="127.0.0.1"), 403)


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [
        ("10.0.0.1", 200),
        ("203.0.113.5", 403),
        # A client cannot prepend its way in: the chain is read from the right.
        ("10.0.0.1, 203.0.113.5", 403),
        ("203.0.113.5, 10.0.0.1", 200),
        # Every hop a trusted proxy: the left-most is the best we know.
        ("10.0.0.1, 172.16.0.2", 200),
        ("", 403),
    ],
)
def test_forwarded_for_from_a_trusted_proxy_is_walked_from_the_right(
    client, due, settings, forwarded, status
):
    settings.DATAFLOWS = {
        "HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"],
        "HEARTBEAT_TRUSTED_PROXIES": ["172.16.0.0/12"],
    }

    assert post(client, remote="172.16.0.1", HTTP_X_FORWARDED_FOR=forwarded).status_code == status


@pytest.mark.parametrize("forwarded", ["not-an-ip", "10.0.0.1, <script>", "10.0.0.1,,999.1.1.1"])
def test_malformed_forwarded_for_from_a_trusted_proxy_is_a_400(client, due, settings, forwarded):
    settings.DATAFLOWS = {
        "HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"],
        "HEARTBEAT_TRUSTED_PROXIES": ["172.16.0.0/12"],
    }

    assert_refused(post(client, remote="172.16.0.1", HTTP_X_FORWARDED_FOR=forwarded), 400)


def test_malformed_forwarded_for_from_an_untrusted_peer_is_ignored(client, due, settings):
    settings.DATAFLOWS = {"HEARTBEAT_ALLOWED_IPS": ["127.0.0.0/8"]}

    assert post(client, HTTP_X_FORWARDED_FOR="garbage").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        {"HTTP_X_FORWARDED_FOR": "203.0.113.5"},
        {"HTTP_FORWARDED": "for=203.0.113.5"},
        {"HTTP_X_REAL_IP": "203.0.113.5"},
    ],
)
def test_by_default_a_request_through_a_local_proxy_is_refused(client, due, header):
    # nginx on the same host connects from 127.0.0.1: loopback is not "this machine" then.
    assert_refused(post(client, **header), 403)


# -- body, logging ------------------------------------------------------------------


def test_a_huge_body_is_refused_with_413(client, due):
    response = client.post(
        URL, data="x" * 1_000_000, content_type="text/plain", REMOTE_ADDR="127.0.0.1"
    )

    assert_refused(response, 413)


def test_a_bad_content_length_is_refused(client, due):
    assert_refused(post(client, CONTENT_LENGTH="lots"), 413)


def test_a_small_body_is_ignored(client, due):
    response = client.post(URL, data={"note": "from cron"}, REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200


def test_every_request_is_logged_with_client_and_outcome(client, due, caplog):
    caplog.set_level(logging.INFO, logger="django_dataflows.heartbeat")

    post(client)
    post(client, remote="203.0.113.9")

    accepted, refused = [r for r in caplog.records if r.name == "django_dataflows.heartbeat"]
    assert accepted.levelno == logging.INFO
    assert "client=127.0.0.1" in accepted.getMessage()
    assert "triggered=1" in accepted.getMessage()
    assert refused.levelno == logging.WARNING
    assert "status=403 client=203.0.113.9" in refused.getMessage()
    assert "at=20" in accepted.getMessage()
    assert "at=20" in refused.getMessage()


def test_a_backend_that_refuses_runs_makes_a_503_with_the_counts(client, due, settings):
    settings.DATAFLOWS = {"BACKEND": "tests.test_backends.RefusingBackend"}

    response = post(client)

    assert response.status_code == 503
    assert response.json()["flows_triggered"] == 1
    assert response.json()["flows_failed"] == 1
    assert response.json()["enqueue_failures"] == 1
    assert due.runs.get().status == RunStatus.FAILED


def test_the_url_without_its_trailing_slash_runs_the_heartbeat_instead_of_redirecting(client, due):
    # APPEND_SLASH would answer 301, which `curl -f` counts as success though nothing ran.
    response = client.post("/dataflows/heartbeat", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 200
    assert response.json()["flows_triggered"] == 1
    assert due.runs.get().status == RunStatus.SUCCESS


def test_a_get_without_the_slash_is_refused_not_redirected(client, due):
    response = client.get("/dataflows/heartbeat", REMOTE_ADDR="127.0.0.1")

    assert response.status_code == 405
    assert not DataFlowRun.objects.exists()


def test_the_answer_counts_overdue_flows(client, due):
    assert post(client).json()["flows_overdue"] == 0


# -- misconfiguration the checks would report: JSON 503 naming the setting ---------------


@pytest.mark.parametrize(
    ("key", "entries"),
    [("HEARTBEAT_ALLOWED_IPS", ["10.0.0.1/8"]), ("HEARTBEAT_TRUSTED_PROXIES", ["nope"])],
)
def test_a_malformed_network_setting_is_a_json_503_naming_it(client, due, settings, key, entries):
    settings.DATAFLOWS = {key: entries}

    response = post(client)

    assert_refused(response, 503)
    assert f"DATAFLOWS[{key!r}] has an entry that is not an IP address" in response.json()["error"]
