"""System checks: each misconfiguration is reported with its own id."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_dataflows import Flow
from django_dataflows import flows as flow_registry
from django_dataflows.checks import check_flows, check_heartbeat_security, check_settings

GOOD_TOKEN = "k" * 40


def ids(messages):
    return sorted(message.id for message in messages)


def test_default_settings_pass():
    assert check_settings() == []


@pytest.mark.parametrize(
    ("dataflows", "expected"),
    [
        (["not", "a", "dict"], ["dataflows.E001"]),
        ({"HEARTBEAT_TOKNE": "x" * 40}, ["dataflows.E002"]),
        ({"BACKEND": "no.such.Backend"}, ["dataflows.E003"]),
        ({"BACKEND": "django_dataflows.models.DataFlow"}, ["dataflows.E003"]),
        ({"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8", "not-an-ip"]}, ["dataflows.E004"]),
        ({"HEARTBEAT_ALLOWED_IPS": ["10.0.0.1/8"]}, ["dataflows.E004"]),
        ({"HEARTBEAT_ALLOWED_IPS": "10.0.0.1"}, ["dataflows.E004"]),
        ({"HEARTBEAT_TRUSTED_PROXIES": ["::1", "fe80::zz"]}, ["dataflows.E005"]),
        ({"DEFAULT_QUEUE": "bad queue"}, ["dataflows.E006"]),
        ({"ALLOWED_QUEUES": ["reports"]}, ["dataflows.E006"]),
        ({"ALLOWED_QUEUES": ["default", "no spaces"]}, ["dataflows.E006"]),
        ({"ALLOWED_QUEUES": []}, ["dataflows.E006"]),
        ({"HEARTBEAT_BATCH_SIZE": 0}, ["dataflows.E007"]),
        ({"RUN_TIMEOUT": -1, "RETRY_BACKOFF": "2"}, ["dataflows.E007", "dataflows.E007"]),
        ({"HEARTBEAT_MAX_BODY_SIZE": True}, ["dataflows.E007"]),
        ({"MAX_RETRIES": -1}, ["dataflows.E007"]),
        ({"MAX_INPUT_BYTES": 0, "MAX_JSON_DEPTH": "32"}, ["dataflows.E007", "dataflows.E007"]),
        ({"SSE_WSGI_MAX_STREAMS": -1, "SSE_DB_CONNECTIONS": 0}, ["dataflows.E007"] * 2),
        ({"SSE_WSGI_MAX_SECONDS": 0, "SSE_DB_WAIT": "1"}, ["dataflows.E051"] * 2),
        ({"SSE_CLIENT_QUEUE": 0, "SUMMARY_FIELD_BYTES": None}, ["dataflows.E007"] * 2),
        ({"PICKUP_TIMEOUT": 0, "MAX_REDELIVERIES": 1.5}, ["dataflows.E007", "dataflows.E007"]),
        ({"RUN_LOG_MAX_LINES": 0, "HEALTH_MAX_HEARTBEAT_AGE": "3"}, ["dataflows.E007"] * 2),
        ({"RUN_LOG_LEVEL": "CHATTY"}, ["dataflows.E060"]),
        ({"RUN_LOG_LEVEL": None}, ["dataflows.E060"]),
        ({"HEARTBEAT_TOKEN": ""}, ["dataflows.E008"]),
        ({"HEARTBEAT_TOKEN": 1234}, ["dataflows.E008"]),
        ({"CALLBACKS": ["no.such.callback"]}, ["dataflows.E009"]),
        ({"CALLBACKS": ["django_dataflows.conf.DEFAULTS"]}, ["dataflows.E009"]),
        ({"ALERT_EMAILS": ["ops@example.com", "not an address"]}, ["dataflows.E020"]),
        ({"ALERT_EMAILS": 42}, ["dataflows.E020"]),
        ({"FLOW_MODULES": "tests.testapp.extra_flows"}, ["dataflows.E011"]),
        ({"FLOW_MODULES": [7]}, ["dataflows.E011"]),
    ],
)
def test_each_misconfiguration_has_its_id(settings, dataflows, expected):
    settings.DATAFLOWS = dataflows

    assert ids(check_settings()) == expected


def test_valid_settings_of_every_kind_pass(settings):
    settings.DATAFLOWS = {
        "BACKEND": "django_dataflows.backends.dummy.DummyBackend",
        "HEARTBEAT_TOKEN": GOOD_TOKEN,
        "HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"],
        "HEARTBEAT_TRUSTED_PROXIES": ["127.0.0.1"],
        "HEARTBEAT_BATCH_SIZE": 100,
        "DEFAULT_QUEUE": "flows",
        "ALLOWED_QUEUES": ["flows", "reports.daily"],
        "MAX_RETRIES": 0,
        "RETRY_BACKOFF": 0.5,
        "RUN_TIMEOUT": 60,
        "PICKUP_TIMEOUT": 2.5,
        "MAX_REDELIVERIES": 0,
        "CALLBACKS": ["tests.test_executor.record_callback"],
        "ALERT_EMAILS": ["ops@example.com"],
    }

    assert check_settings() == []
    assert check_heartbeat_security() == []


def test_a_flow_module_that_cannot_be_imported_is_reported():
    app_config = apps.get_app_config("dataflows")
    app_config.flow_module_errors = [("myproject.missing_flows", ImportError("No module"))]
    try:
        assert ids(check_settings()) == ["dataflows.E010"]
    finally:
        app_config.flow_module_errors = []


@pytest.mark.parametrize(
    ("dataflows", "expected"),
    [
        ({}, ["dataflows.W001"]),
        ({"HEARTBEAT_TOKEN": "short"}, ["dataflows.W002"]),
        ({"HEARTBEAT_ALLOWED_IPS": ["10.0.0.0/8"]}, []),
        ({"HEARTBEAT_TOKEN": GOOD_TOKEN}, []),
        ("not a dict", []),
    ],
)
def test_deploy_checks_warn_about_an_open_heartbeat(settings, dataflows, expected):
    settings.DATAFLOWS = dataflows

    assert ids(check_heartbeat_security()) == expected


def test_manage_py_check_fails_on_a_bad_setting(settings):
    settings.DATAFLOWS = {"HEARTBEAT_BATCH_SIZE": -3}

    with pytest.raises(SystemCheckError, match=r"dataflows\.E007"):
        call_command("check")


def test_the_deploy_warning_shows_in_check_deploy(settings):
    settings.DATAFLOWS = {}

    with pytest.raises(SystemCheckError, match=r"dataflows\.W001"):
        call_command("check", "--deploy", "--fail-level", "WARNING")


def test_a_flow_modules_string_is_not_split_into_one_letter_modules(settings):
    from django_dataflows.conf import app_settings

    settings.DATAFLOWS = {"FLOW_MODULES": "tests.testapp.extra_flows"}

    assert app_settings.FLOW_MODULES == []


@pytest.fixture
def restore_registry():
    saved = dict(flow_registry._registry)
    yield
    flow_registry._registry.clear()
    flow_registry._registry.update(saved)


def test_registered_flows_of_the_test_app_pass():
    assert check_flows() == []


def test_an_invalid_configuration_schema_is_an_error_naming_the_flow(restore_registry):
    class BadSchema(Flow):
        configuration_schema = {"type": "object", "properties": {"n": {"type": "number-ish"}}}

        def run(self) -> None:
            return None

    [error] = check_flows()

    assert error.id == "dataflows.E040"
    assert "BadSchema.configuration_schema is not a valid JSON Schema" in error.msg
    assert "properties/n/type" in error.msg


def test_a_configuration_schema_that_is_not_a_dict_is_an_error(restore_registry):
    class ListSchema(Flow):
        configuration_schema = ["batch_size"]  # type: ignore[assignment]

        def run(self) -> None:
            return None

    [error] = check_flows()

    assert error.id == "dataflows.E040"
    assert "must be a JSON Schema (a dict), not list" in error.msg


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (("extract", "lod"), "names 'lod', which is not a method of the flow"),
        (("extract", "checkpoint"), "names 'checkpoint', which is not a method of the flow"),
        ("extract", "must be a tuple of method names"),
        (("extract", "extract"), "names a step twice"),
    ],
)
def test_steps_that_name_no_method_are_an_error(restore_registry, steps, message):
    class Stepped(Flow):
        def extract(self) -> None:
            return None

    Stepped.steps = steps

    [error] = check_flows()

    assert error.id == "dataflows.E041"
    assert message in error.msg


def test_the_flow_checks_run_at_start_up(restore_registry):
    class Broken(Flow):
        steps = ("missing",)

    with pytest.raises(SystemCheckError, match=r"dataflows\.E041"):
        call_command("check")
