"""The executor always records an outcome: exits, interrupts, refused values, broken connections.

The real-process versions (a gunicorn server, Celery workers) are in ``tests/test_faults.py``;
these run the executor in this process, on either database.
"""

from __future__ import annotations

import pytest

from django_dataflows.exceptions import FlowExited
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlowRun, RunStatus
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db

EXITED = (
    "SystemExit(3): the flow called sys.exit(), or its process was told to exit while the flow ran."
)


def test_sys_exit_in_a_flow_fails_the_run_and_raises_an_ordinary_error():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.Exits")

    with pytest.raises(FlowExited) as raised:
        FlowExecutor.execute(data_flow)

    assert raised.value.code == 3
    run = DataFlowRun.objects.get()
    assert (run.status, run.error_message) == (RunStatus.FAILED, EXITED)
    assert "SystemExit: 3" in run.error_backtrace


def test_a_heartbeat_goes_on_after_a_flow_calls_sys_exit():
    flows = [
        DataFlowFactory(name="a", configuration={"label": "a"}),
        DataFlowFactory(name="b", flow="tests.testapp.flows.Exits"),
        DataFlowFactory(name="c", configuration={"label": "c"}),
    ]

    result = run_heartbeat()

    assert (result.flows_triggered, result.flows_failed) == (3, 1)
    statuses = {run.data_flow.name: run.status for run in DataFlowRun.objects.all()}
    assert statuses == {"a": RunStatus.SUCCESS, "b": RunStatus.FAILED, "c": RunStatus.SUCCESS}
    assert len(flows) == 3


def test_keyboard_interrupt_is_recorded_then_raised_and_told_to_the_retry_policy():
    run = DataFlowFactory(flow="tests.testapp.flows.Interrupts").create_pending_run()
    heard = []

    with pytest.raises(KeyboardInterrupt):
        FlowExecutor.execute_queued(run.pk, on_failure=lambda run, exc: heard.append(exc))

    run.refresh_from_db()
    assert (run.status, run.error_message) == (RunStatus.FAILED, "KeyboardInterrupt")
    assert [type(exc) for exc in heard] == [KeyboardInterrupt]


@pytest.mark.parametrize(
    ("flow", "message"),
    [
        pytest.param(
            "ReturnsNaN",
            "The flow returned a result that cannot be stored as JSON: it holds NaN or an "
            "infinite number, which JSON cannot represent",
            id="nan",
        ),
        pytest.param(
            "ReturnsNul",
            "The flow returned a result that cannot be stored as JSON: a string in it holds "
            "a NUL character (\\x00)",
            id="nul-result",
        ),
        pytest.param("FailsWithNul", "bad byte \\x00 in the input", id="nul-message"),
    ],
)
def test_values_the_database_would_refuse_fail_the_run_with_a_clear_message(flow, message):
    data_flow = DataFlowFactory(flow=f"tests.testapp.flows.{flow}")

    with pytest.raises(Exception):  # noqa: B017, PT011 - the flow's own error
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()
    assert (run.status, run.error_message) == (RunStatus.FAILED, message)
    assert "\x00" not in run.error_backtrace


def test_an_escaped_backslash_before_u0000_is_ordinary_text():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoConfiguration")
    data_flow.configuration = {"text": "C:\\u0000"}  # a backslash, then "u0000": no NUL
    data_flow.save()

    FlowExecutor.execute(data_flow)

    assert DataFlowRun.objects.get().result["configuration"] == {"text": "C:\\u0000"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("quietly", [False, True], ids=["raises", "returns"])
def test_a_flow_that_ends_its_own_connection_is_recorded_on_a_fresh_one(quietly):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.EndsOwnConnection", configuration={"quietly": quietly}
    )

    with pytest.raises(Exception):  # noqa: B017, PT011 - what the broken connection raised
        FlowExecutor.execute(data_flow)

    run = DataFlowRun.objects.get()  # a new connection: the old one is gone
    assert run.status == RunStatus.FAILED
    assert "recorded on a new database connection" in run.error_message
    if quietly:  # the flow succeeded; storing its outcome failed
        assert run.error_message.startswith("The run's outcome could not be stored: ")
    else:
        assert "terminating connection due to administrator command" in run.error_message
    assert not Record.objects.exists()
