"""The Flow base class and its registry."""

from __future__ import annotations

import pytest

from django_dataflows import Flow, FlowContext, PermanentFlowError
from django_dataflows import flows as flow_registry
from django_dataflows.exceptions import DataFlowError, FlowNotRegistered
from django_dataflows.flows import autodiscover, get_flow_class, register, registered_flows


@pytest.fixture(autouse=True)
def _restore_registry():
    # Classes defined inside these tests register themselves; keep the registry as it was.
    saved = dict(flow_registry._registry)
    yield
    flow_registry._registry.clear()
    flow_registry._registry.update(saved)


def test_flows_of_installed_apps_are_discovered():
    flows = registered_flows()

    assert "tests.testapp.flows.CountRows" in flows
    assert "tests.testapp.flows.AbstractBase" not in flows
    assert list(flows) == sorted(flows)


def test_a_subclass_is_registered_under_its_dotted_path():
    class Local(Flow):
        """Defined inside a test."""

        def run(self):
            return 1

    path = f"{__name__}.test_a_subclass_is_registered_under_its_dotted_path.<locals>.Local"
    assert get_flow_class(path) is Local
    assert Local.describe() == "Defined inside a test."


def test_flows_without_a_docstring_describe_as_empty():
    class Quiet(Flow):
        def run(self):
            return None

    assert Quiet.describe() == ""


def test_the_base_run_must_be_implemented():
    class Lazy(Flow):
        pass

    with pytest.raises(NotImplementedError, match="Lazy must implement run"):
        Lazy({}).run()


def test_a_flow_copies_its_configuration():
    configuration = {"batch_size": 5}
    flow = Flow(configuration)
    flow.configuration["batch_size"] = 6

    assert configuration == {"batch_size": 5}
    assert Flow(None).configuration == {}
    assert Flow().context is None


def test_only_flow_subclasses_can_be_registered():
    with pytest.raises(TypeError, match="is not a subclass"):
        register(dict)  # type: ignore[arg-type]


def test_looking_up_an_unknown_path_raises():
    with pytest.raises(FlowNotRegistered) as info:
        get_flow_class("os.system")

    assert info.value.path == "os.system"
    assert isinstance(info.value, DataFlowError)


def test_modules_named_in_settings_are_imported_and_failures_returned():
    failures = autodiscover(["tests.testapp.extra_flows", "tests.testapp.missing_module"])

    assert "tests.testapp.extra_flows.FromSettings" in registered_flows()
    assert [module for module, _ in failures] == ["tests.testapp.missing_module"]


def test_public_names_are_importable_from_the_package():
    import django_dataflows
    from django_dataflows import FlowExecutor, executor, flows

    assert (Flow, FlowContext) == (flows.Flow, flows.FlowContext)
    assert FlowExecutor is executor.FlowExecutor
    assert issubclass(PermanentFlowError, DataFlowError)
    with pytest.raises(AttributeError):
        django_dataflows.Nope  # noqa: B018


def test_every_error_the_app_raises_on_purpose_is_a_dataflow_error():
    from django_dataflows.exceptions import (
        FlowTimeout,
        MalformedForwardedFor,
        RunOfAnotherFlow,
        UnstorableValue,
    )
    from django_dataflows.executor import FlowTimeout as executor_timeout
    from django_dataflows.security import MalformedForwardedFor as security_error

    for error in (FlowTimeout, MalformedForwardedFor, RunOfAnotherFlow, UnstorableValue):
        assert issubclass(error, DataFlowError), error
    # Where they used to live, they are still found.
    assert (executor_timeout, security_error) == (FlowTimeout, MalformedForwardedFor)
