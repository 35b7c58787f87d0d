"""The worker's path on PostgreSQL: two statements per run, one durable commit.

``FlowExecutor.execute_queued()`` outside a transaction, as a worker calls it: one
statement takes the run (its commit not waited for), one records the outcome with the
flow's bookkeeping. These tests pin what each statement writes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, StepStatus
from tests.factories import DataFlowFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True, params=["django-default", "prepared"])
def statement_preparation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test twice: as Django connects by default (nothing prepared), and with psycopg
    allowed to prepare every statement at its first run (``OPTIONS["prepare_threshold"]``
    0), where the worker's statements bind their parameters on the server. (Under
    ``CaptureQueriesContext`` queries are logged, and the worker uses Django's cursor.)"""
    connection.ensure_connection()
    raw = connection.connection
    previous = raw.prepare_threshold
    raw.prepare_threshold = None if request.param == "django-default" else 0
    try:
        yield request.param
    finally:
        if connection.connection is raw and not raw.closed:
            raw.prepare_threshold = previous
            raw.execute("DEALLOCATE ALL")  # psycopg forgets its prepared statements too


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
        return [row[0] for row in cursor.fetchall()]


def test_a_no_op_run_costs_the_worker_two_statements():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")
    run = data_flow.create_pending_run()

    with CaptureQueriesContext(connection) as queries:
        FlowExecutor.execute_queued(run.pk)

    assert len(queries) == 2, [query["sql"][:80] for query in queries]
    assert "set_config('synchronous_commit', 'off', true)" in queries[0]["sql"]
    run.refresh_from_db()
    data_flow.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.started_at == run.activated_at
    assert run.duration_ms is not None
    assert (data_flow.last_run_status, data_flow.last_run_at) == (RunStatus.SUCCESS, run.started_at)


def test_while_the_body_runs_the_flow_shows_its_run_in_progress():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.EchoConfiguration")
    run = data_flow.create_pending_run()
    seen = []

    def look(**kwargs: object) -> None:
        seen.append(DataFlow.objects.get(pk=data_flow.pk).last_run_status)

    from django_dataflows import signals

    signals.run_started.connect(look, dispatch_uid="look")
    try:
        FlowExecutor.execute_queued(run.pk)
    finally:
        signals.run_started.disconnect(dispatch_uid="look")

    assert seen == [RunStatus.IN_PROGRESS]


def test_the_state_is_saved_with_the_success_and_read_by_the_next_run():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.KeepsCursor", configuration={"step": 5})

    for _ in range(2):
        FlowExecutor.execute_queued(data_flow.create_pending_run().pk)

    data_flow.refresh_from_db()
    assert data_flow.state == {"cursor": 10}
    assert list(data_flow.runs.order_by("pk").values_list("result", flat=True)) == [
        {"cursor": 5},
        {"cursor": 10},
    ]


def test_a_failure_keeps_the_state_and_records_the_error():
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.KeepsCursor", configuration={"fail": True}
    )
    run = data_flow.create_pending_run()

    with pytest.raises(ValueError, match="failed after moving the cursor"):
        FlowExecutor.execute_queued(run.pk)

    run.refresh_from_db()
    data_flow.refresh_from_db()
    assert (run.status, run.error_message) == (RunStatus.FAILED, "failed after moving the cursor")
    assert "ValueError" in run.error_backtrace
    assert (data_flow.last_run_status, data_flow.state) == (RunStatus.FAILED, {})


def test_a_late_outcome_leaves_the_reaped_run_and_the_newer_one_alone():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")
    old = data_flow.create_pending_run()
    taken = DataFlowRun.objects.get(pk=old.pk)
    DataFlowRun.objects.filter(pk=old.pk).update(status=RunStatus.TIMED_OUT)  # reaped
    newer = data_flow.create_pending_run()
    taken.status = RunStatus.IN_PROGRESS  # what the lost worker still believes

    FlowExecutor._record_success(taken, {"late": True})

    data_flow.refresh_from_db()
    assert DataFlowRun.objects.get(pk=old.pk).status == RunStatus.TIMED_OUT
    assert DataFlowRun.objects.get(pk=newer.pk).status == RunStatus.PENDING
    assert data_flow.last_run_status == RunStatus.PENDING


def test_a_duplicate_message_changes_nothing():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.CountRows")
    run = data_flow.create_pending_run()
    FlowExecutor.execute_queued(run.pk)
    finished = DataFlowRun.objects.get(pk=run.pk)

    FlowExecutor.execute_queued(run.pk)

    again = DataFlowRun.objects.get(pk=run.pk)
    assert (again.status, again.ended_at, again.result) == (
        finished.status,
        finished.ended_at,
        finished.result,
    )


def test_a_stepped_run_creates_its_steps_and_finishes_them():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.ThreeSteps")
    run = data_flow.create_pending_run()

    FlowExecutor.execute_queued(run.pk)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert list(run.steps.values_list("name", "status")) == [
        ("one", StepStatus.SUCCESS),
        ("two", StepStatus.SUCCESS),
        ("three", StepStatus.SUCCESS),
    ]
    assert run.result == {"one": {"value": 42}, "two": 43, "three": "done"}


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
def test_values_the_database_would_refuse_are_rejected_before_the_outcome_statement(flow, message):
    data_flow = DataFlowFactory(flow=f"tests.testapp.flows.{flow}")
    run = data_flow.create_pending_run()

    with pytest.raises(Exception):  # noqa: B017, PT011 - the flow's own error
        FlowExecutor.execute_queued(run.pk)

    run.refresh_from_db()
    data_flow.refresh_from_db()
    assert (run.status, run.error_message) == (RunStatus.FAILED, message)
    assert "\x00" not in run.error_backtrace
    assert data_flow.last_run_status == RunStatus.FAILED


@pytest.mark.parametrize("quietly", [False, True], ids=["raises", "returns"])
def test_an_outcome_the_statement_cannot_write_is_written_on_a_fresh_connection(quietly):
    data_flow = DataFlowFactory(
        flow="tests.testapp.flows.EndsOwnConnection", configuration={"quietly": quietly}
    )
    run = data_flow.create_pending_run()

    with pytest.raises(Exception):  # noqa: B017, PT011 - what the broken connection raised
        FlowExecutor.execute_queued(run.pk)

    run.refresh_from_db()  # a new connection: the old one is gone
    data_flow.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "recorded on a new database connection" in run.error_message
    if quietly:  # the flow succeeded; storing its outcome failed
        assert run.error_message.startswith("The run's outcome could not be stored: ")
    assert data_flow.last_run_status == RunStatus.FAILED


def test_a_success_after_failures_sends_its_recovery_without_a_third_statement(mailoutbox):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp", alert_emails="ops@example.com")
    DataFlow.objects.filter(pk=data_flow.pk).update(consecutive_failures=2)
    run = data_flow.create_pending_run()

    FlowExecutor.execute_queued(run.pk)

    data_flow.refresh_from_db()
    assert data_flow.consecutive_failures == 0
    assert [mail.subject for mail in mailoutbox] == [f"[dataflows] {data_flow.name} recovered"]
    assert "It ends a run of 2 consecutive failed runs." in mailoutbox[0].body


def test_both_statements_announce_the_run_to_live_status():
    # The worker's writes bypass the queryset, so they announce themselves: without it,
    # LISTEN/NOTIFY and Redis clients would see a run start and end only at the next poll.
    from django_dataflows import signals

    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")
    run = data_flow.create_pending_run()
    announced: list[list[int]] = []

    def record(run_ids: list[int], **kwargs: object) -> None:
        announced.append(list(run_ids))

    signals.runs_changed.connect(record, dispatch_uid="record-runs-changed")
    try:
        FlowExecutor.execute_queued(run.pk)
    finally:
        signals.runs_changed.disconnect(dispatch_uid="record-runs-changed")

    assert announced.count([run.pk]) >= 2  # taken, then ended


def test_the_worker_prepares_its_statements_only_where_the_project_allows_it(
    statement_preparation,
):
    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")

    for _ in range(2):
        FlowExecutor.execute_queued(data_flow.create_pending_run().pk)

    assert data_flow.runs.filter(status=RunStatus.SUCCESS).count() == 2
    prepared = prepared_statements()
    if statement_preparation == "django-default":
        # As Django connects by default: safe behind PgBouncer in transaction mode.
        assert prepared == []
    else:
        # Planned once per connection: the second run reused both plans.
        assert len(prepared) == 2, prepared
        assert "synchronous_commit" in prepared[0]
        assert prepared[1].startswith("WITH moved AS")


def test_the_times_a_worker_reads_are_in_the_current_time_zone(settings):
    # The connection was opened under the suite's settings; the worker's statements must
    # read datetimes as Django's own queries on that connection now do.
    settings.USE_TZ = False
    settings.TIME_ZONE = "America/New_York"
    data_flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")
    run = data_flow.create_pending_run()
    started = []

    def look(run: DataFlowRun, **kwargs: object) -> None:
        started.append(run.started_at)

    from django_dataflows import signals

    signals.run_started.connect(look, dispatch_uid="look-started")
    try:
        FlowExecutor.execute_queued(run.pk)
    finally:
        signals.run_started.disconnect(dispatch_uid="look-started")

    run.refresh_from_db()
    assert started == [run.started_at]
    assert run.started_at.tzinfo is None
