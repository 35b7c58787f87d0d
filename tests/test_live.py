"""Live status in-process: every write moves updated_at, changes are announced after
commit, the sources' lifecycle, the streams' logic, the views' errors and the checks."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.checks import run_checks
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone
from rest_framework import serializers

from django_dataflows import signals
from django_dataflows.executor import FlowExecutor
from django_dataflows.live import get_event_source, load_event_source_class, publish_runs_changed
from django_dataflows.live.base import Subscriber, load_run_ids
from django_dataflows.live.payloads import run_payload
from django_dataflows.live.polling import PollingEvents
from django_dataflows.live.streams import Stream, async_events, format_event
from django_dataflows.models import DataFlowRun, DataFlowRunStep, RunStatus, StepStatus
from tests.async_workers import PATIENCE
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

LONG_AGO = datetime(2001, 1, 1, tzinfo=UTC)


def aged(run: DataFlowRun) -> DataFlowRun:
    """The run with its updated_at set far back, so that any write visibly moves it."""
    DataFlowRun.objects.filter(pk=run.pk).update(updated_at=LONG_AGO)
    run.refresh_from_db()
    return run


def moved(run: DataFlowRun) -> bool:
    return DataFlowRun.objects.get(pk=run.pk).updated_at > LONG_AGO + timedelta(days=1)


# -- updated_at: one test per write path -------------------------------------------------


def test_a_new_run_gets_updated_at_from_the_database():
    run = DataFlowRunFactory()
    assert DataFlowRun.objects.get(pk=run.pk).updated_at is not None


def test_save_moves_updated_at():
    run = aged(DataFlowRunFactory())
    run.error_message = "edited"
    run.save()
    assert moved(run)
    assert run.updated_at > LONG_AGO  # the instance is refreshed too


def test_save_with_update_fields_moves_updated_at():
    run = aged(DataFlowRunFactory())
    run.progress = {"done": 1}
    run.save(update_fields=["progress"])
    assert moved(run)


def test_a_conditional_queryset_update_moves_updated_at():
    run = aged(DataFlowRunFactory(status=RunStatus.PENDING))
    assert DataFlowRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
        status=RunStatus.IN_PROGRESS
    )
    assert moved(run)


def test_executing_a_run_moves_updated_at_at_every_transition():
    run = aged(DataFlowRunFactory(status=RunStatus.PENDING))
    FlowExecutor.execute(run.data_flow, run=run)
    assert DataFlowRun.objects.get(pk=run.pk).status == RunStatus.SUCCESS
    assert moved(run)


def test_a_failing_run_moves_updated_at():
    run = aged(
        DataFlowRunFactory(
            status=RunStatus.PENDING, data_flow__flow="tests.testapp.flows.DividesByZero"
        )
    )
    with pytest.raises(ZeroDivisionError):
        FlowExecutor.execute(run.data_flow, run=run)
    assert moved(run)


def test_cancelling_moves_updated_at():
    run = aged(DataFlowRunFactory(status=RunStatus.PENDING))
    assert FlowExecutor.cancel(run)
    assert moved(run)


def test_recording_the_backends_bookkeeping_moves_updated_at():
    run = aged(DataFlowRunFactory(status=RunStatus.PENDING))
    FlowExecutor.record_enqueued(run, task_id="task-1", queue="default")
    assert moved(run)


def test_timing_out_a_stuck_run_moves_updated_at():
    run = aged(
        DataFlowRunFactory(
            status=RunStatus.IN_PROGRESS,
            created_at=LONG_AGO,
            started_at=LONG_AGO,
            activated_at=LONG_AGO,
        )
    )
    assert FlowExecutor.time_out_stuck_runs() == 1
    assert moved(run)


def test_taking_back_an_unclaimed_run_moves_updated_at(dummy_backend):
    run = aged(
        DataFlowRunFactory(status=RunStatus.PENDING, created_at=LONG_AGO, activated_at=LONG_AGO)
    )
    assert [taken.pk for taken in FlowExecutor.take_back_unclaimed_runs().runs] == [run.pk]
    assert moved(run)


def test_soft_delete_moves_updated_at():
    run = aged(DataFlowRunFactory(status=RunStatus.SUCCESS))
    run.soft_delete()
    assert moved(run)


def test_every_step_write_moves_the_steps_updated_at():
    run = DataFlowRunFactory()
    step = DataFlowRunStep.objects.create(run=run, position=1, name="extract")
    assert step.updated_at is not None
    for write in (
        lambda: DataFlowRunStep.objects.filter(pk=step.pk).update(status=StepStatus.SUCCESS),
        lambda: DataFlowRunStep.objects.get(pk=step.pk).save(),
    ):
        DataFlowRunStep.objects.filter(pk=step.pk).update(updated_at=LONG_AGO)
        write()
        assert DataFlowRunStep.objects.get(pk=step.pk).updated_at > LONG_AGO + timedelta(days=1)


# -- announcing changes after commit -------------------------------------------------------


@pytest.fixture
def announced():
    received: list[list[int]] = []

    def receiver(sender, run_ids, **kwargs):
        received.append(run_ids)

    signals.runs_changed.connect(receiver, dispatch_uid="test-live")
    yield received
    signals.runs_changed.disconnect(dispatch_uid="test-live")


def test_changes_are_announced_only_once_the_transaction_commits(
    announced, django_capture_on_commit_callbacks
):
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    announced.clear()
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)
        step = DataFlowRunStep.objects.create(run=run, position=1, name="x")
        DataFlowRunStep.objects.filter(pk=step.pk).update(status=StepStatus.SUCCESS)
        assert announced == []
    assert len(callbacks) == 3
    assert announced == [[run.pk], [run.pk], [run.pk]]


def test_a_rolled_back_change_is_never_announced(announced):
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    announced.clear()

    def change_then_fail() -> None:
        with transaction.atomic():
            DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        change_then_fail()
    assert announced == []


def test_the_polling_source_costs_writes_nothing(settings):
    from django_dataflows.apps import connect_live_publisher

    connect_live_publisher()
    assert not signals.runs_changed.has_listeners()
    assert not load_event_source_class(
        settings.DATAFLOWS.get("EVENTS", "django_dataflows.live.polling.PollingEvents")
    ).publishes


def test_publish_receiver_hands_ids_to_a_publishing_source(settings, monkeypatch):
    published = []
    source = get_event_source()
    monkeypatch.setattr(type(source), "publishes", True)
    monkeypatch.setattr(source, "publish", published.append)
    publish_runs_changed(sender=DataFlowRun, run_ids=[3, 4])
    assert published == [[3, 4]]


# -- sources and streams ---------------------------------------------------------------


def test_the_poller_runs_only_while_someone_watches():
    source = PollingEvents()
    first, second = Subscriber(lambda batch: None), Subscriber(lambda batch: None)
    source.subscribe(first)
    source.subscribe(second)
    listener = source._listener
    assert source.listening
    assert source.subscriber_count == 2
    source.unsubscribe(first)
    assert source.listening
    source.unsubscribe(second)
    assert not source.listening
    listener.thread.join(timeout=PATIENCE)
    assert not listener.thread.is_alive()


def test_the_source_hands_each_subscriber_only_the_runs_it_wants():
    source = PollingEvents()
    one, other = DataFlowRunFactory(), DataFlowRunFactory()
    got: dict[str, list[int]] = {"one": [], "flow": [], "all": []}
    subscribers = [
        Subscriber(lambda batch: got["one"].extend(s.run_id for s in batch), run_id=one.pk),
        Subscriber(
            lambda batch: got["flow"].extend(s.run_id for s in batch), flow_id=other.data_flow_id
        ),
        Subscriber(lambda batch: got["all"].extend(s.run_id for s in batch)),
    ]
    source._subscribers.update(subscribers)
    source.deliver(load_run_ids([one.pk, other.pk]))
    assert got == {"one": [one.pk], "flow": [other.pk], "all": [one.pk, other.pk]}


def test_a_stream_sends_each_state_once_and_ends_with_its_run():
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    stream = Stream(run_id=run.pk)
    (snapshot,) = stream.opening()
    assert snapshot.startswith(b"event: snapshot\n")
    assert stream.receive(load_run_ids([run.pk])) == []  # nothing new
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    (event,) = stream.receive(load_run_ids([run.pk]))
    assert event.startswith(b"event: run\n")
    assert b'"status":"success"' in event
    assert stream.finished


def test_only_staff_streams_carry_the_backtrace():
    run = DataFlowRunFactory(status=RunStatus.FAILED, error_backtrace="Traceback …")
    staff, other = Stream(run_id=run.pk, backtrace=True), Stream(run_id=run.pk)
    assert b"error_backtrace" in staff.opening()[0]
    assert b"error_backtrace" not in other.opening()[0]


def test_a_reconnect_is_sent_what_changed_since_its_last_event():
    flow = DataFlowFactory()
    old = DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS)
    DataFlowRun.objects.filter(pk=old.pk).update(updated_at=LONG_AGO)
    first = Stream(flow_id=flow.pk)
    first.opening()
    new = DataFlowRunFactory(data_flow=flow, status=RunStatus.PENDING)
    again = Stream(flow_id=flow.pk, last_event_id=first.cursor)
    events = again.opening()
    assert [json.loads(e.split(b"data: ")[1])["id"] for e in events] == [new.pk]


def test_event_ids_never_go_back():
    first = format_event("run", {"id": 1}, 7)
    assert first == b'event: run\nid: 7\ndata: {"id":1}\n\n'


def test_the_live_payload_is_the_apis_run(settings):
    from django_dataflows.api.serializers import DataFlowRunSerializer

    run = DataFlowRunFactory(status=RunStatus.FAILED, error_backtrace="tb", progress={"done": 1})
    DataFlowRunStep.objects.create(run=run, position=1, name="extract")
    (loaded,) = load_run_ids([run.pk])
    run = DataFlowRun.objects.prefetch_related("steps").get(pk=run.pk)
    by_fields = serializers.ModelSerializer.to_representation(DataFlowRunSerializer(), run)
    assert run_payload(run, backtrace=True) == json.loads(json.dumps(by_fields))
    assert loaded.payload["steps"][0]["name"] == "extract"


def test_the_live_payload_follows_the_projects_datetime_format(settings):
    from django_dataflows.api.serializers import DataFlowRunSerializer

    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DATETIME_FORMAT": "%d.%m.%Y %H:%M"}
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    DataFlowRunStep.objects.create(run=run, position=1, name="extract", started_at=run.created_at)
    run = DataFlowRun.objects.prefetch_related("steps").get(pk=run.pk)
    by_fields = serializers.ModelSerializer.to_representation(DataFlowRunSerializer(), run)
    payload = run_payload(run, backtrace=True)
    assert payload == json.loads(json.dumps(by_fields))
    assert payload["created_at"] == run.created_at.astimezone(
        timezone.get_current_timezone()
    ).strftime("%d.%m.%Y %H:%M")
    assert payload["steps"][0]["started_at"] == payload["created_at"]


@pytest.mark.django_db(transaction=True)
def test_an_asgi_stream_that_is_cancelled_unsubscribes_and_leaves_no_task():
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()

    listeners = []

    async def watch_then_leave() -> int:
        stream = async_events(source, Stream(run_id=run.pk))
        task = asyncio.ensure_future(stream.__anext__())
        assert (await task).startswith(b"event: snapshot")
        waiting = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.05)
        assert source.subscriber_count == 1
        listeners.append(source._listener)
        waiting.cancel()  # what the ASGI handler does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await stream.aclose()
        return len(asyncio.all_tasks()) - 1  # all but this one

    assert asyncio.run(watch_then_leave()) == 0
    assert source.subscriber_count == 0
    assert not source.listening
    listeners[0].thread.join(timeout=PATIENCE)
    assert not listeners[0].thread.is_alive()


# -- views: errors are JSON ----------------------------------------------------------------


@pytest.fixture
def watcher_client():
    client = Client()
    client.force_login(UserFactory(username="watcher", is_superuser=True, is_staff=True))
    return client


def test_other_methods_answer_405_in_json(watcher_client):
    response = watcher_client.post("/dataflows/api/events/")
    assert (response.status_code, response.json()) == (
        405,
        {"detail": 'Method "POST" not allowed.'},
    )


def test_an_unknown_flow_filter_answers_400_in_json(watcher_client):
    response = watcher_client.get("/dataflows/api/events/?flow=nope")
    assert response.status_code == 400
    assert list(response.json()) == ["flow"]


def test_a_user_without_the_view_permission_gets_403_in_json():
    client = Client()
    client.force_login(UserFactory(username="nobody"))
    response = client.get("/dataflows/api/events/", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 403
    assert response.json() == {"detail": "You do not have permission to perform this action."}


def test_a_token_client_without_credentials_is_challenged_with_401():
    response = Client().get("/dataflows/api/events/", HTTP_ACCEPT="text/event-stream")
    assert response.status_code in (401, 403)
    assert response["Content-Type"] == "application/json"


def test_a_soft_deleted_run_has_no_stream(watcher_client):
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    run.soft_delete()
    assert watcher_client.get(f"/dataflows/api/runs/{run.pk}/events/").status_code == 404


# -- checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataflows", "check_id"),
    [
        ({"EVENTS": "no.such.Source"}, "dataflows.E050"),
        ({"EVENTS": "django_dataflows.models.DataFlow"}, "dataflows.E050"),
        ({"SSE_KEEPALIVE": 0}, "dataflows.E051"),
        ({"SSE_POLL_INTERVAL": "fast"}, "dataflows.E051"),
        (
            {
                "EVENTS_REDIS_URL": "nonsense://x",
                "EVENTS": "django_dataflows.live.redis.RedisEvents",
            },
            "dataflows.E053",
        ),
    ],
)
def test_live_misconfigurations_are_reported_by_checks(settings, dataflows, check_id):
    settings.DATAFLOWS = dataflows
    assert check_id in {message.id for message in run_checks()}


def test_postgres_events_on_another_database_is_reported(settings):
    from django.db import connection

    settings.DATAFLOWS = {"EVENTS": "django_dataflows.live.postgres.PostgresEvents"}
    ids = {message.id for message in run_checks()}
    assert ("dataflows.E052" in ids) == (connection.vendor != "postgresql")


# -- admin pages -----------------------------------------------------------------------


def test_the_dashboard_draws_its_charts_on_the_server(admin_client):
    ended = DataFlowRunFactory(status=RunStatus.SUCCESS, duration_ms=1500)
    DataFlowRunFactory(data_flow=ended.data_flow, status=RunStatus.FAILED, duration_ms=10)
    response = admin_client.get("/admin/dataflows/dataflowrun/dashboard/")
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('class="dataflows-chart"') == 4
    assert ended.data_flow.name in page
    assert "50 %" in page


def test_the_day_chart_shows_the_last_day_and_the_week_chart_the_week(admin_client):
    """Both charts come from one read of the week's hourly counts."""
    recent = DataFlowRunFactory(status=RunStatus.SUCCESS, duration_ms=5)
    older = DataFlowRunFactory(data_flow=recent.data_flow, status=RunStatus.FAILED)
    DataFlowRun.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=3))
    page = admin_client.get("/admin/dataflows/dataflowrun/dashboard/").content.decode()
    day = page.split("Runs per hour, last 24 hours")[1].split("</svg>")[0]
    week = page.split("Runs per hour, last 168 hours")[1].split("</svg>")[0]
    assert ": 1 Success</title>" in day
    assert ": 1 Failed</title>" not in day
    assert ": 1 Success</title>" in week
    assert ": 1 Failed</title>" in week


def test_the_dashboard_charts_the_slowest_and_least_successful_flows(admin_client, monkeypatch):
    monkeypatch.setattr("django_dataflows.admin.charts.FLOWS_CHARTED", 2)
    for name, duration, statuses in (
        ("quick-and-sure", 10, [RunStatus.SUCCESS] * 3),
        ("slow-and-sure", 9000, [RunStatus.SUCCESS] * 3),
        ("middling", 500, [RunStatus.SUCCESS, RunStatus.FAILED]),
    ):
        flow = DataFlowFactory(name=name)
        for status in statuses:
            DataFlowRunFactory(data_flow=flow, status=status, duration_ms=duration)
    page = admin_client.get("/admin/dataflows/dataflowrun/dashboard/").content.decode()
    durations, rates = page.split("Slowest flows")[1].split("Least successful flows")
    assert "slow-and-sure" in durations
    assert "middling" in durations
    assert "quick-and-sure" not in durations
    assert "middling" in rates


def test_the_live_runs_page_lists_active_runs_and_points_at_the_stream(admin_client):
    active = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    finished = DataFlowRunFactory(status=RunStatus.SUCCESS)
    page = admin_client.get("/admin/dataflows/dataflowrun/live/").content.decode()
    assert f'data-run="{active.pk}"' in page
    assert f'data-run="{finished.pk}"' not in page
    assert 'data-stream-url="/dataflows/api/events/"' in page


def test_the_run_page_carries_the_live_panel(admin_client):
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    page = admin_client.get(f"/admin/dataflows/dataflowrun/{run.pk}/change/").content.decode()
    assert f'data-stream-url="/dataflows/api/runs/{run.pk}/events/"' in page
    assert "django_dataflows/live.js" in page


def test_the_live_pages_need_the_view_permission(client):
    client.force_login(UserFactory(username="staff-only", is_staff=True))
    assert client.get("/admin/dataflows/dataflowrun/live/").status_code == 403
    assert client.get("/admin/dataflows/dataflowrun/dashboard/").status_code == 403


# -- the sources' listeners, in-process --------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/7"
REDIS = "django_dataflows.live.redis.RedisEvents"
POSTGRES = "django_dataflows.live.postgres.PostgresEvents"


@pytest.fixture
def publishing_to(settings):
    from django_dataflows.apps import connect_live_publisher

    def use(path: str) -> None:
        settings.DATAFLOWS = {"EVENTS": path, "EVENTS_REDIS_URL": REDIS_URL}
        connect_live_publisher()

    yield use
    settings.DATAFLOWS = {}
    connect_live_publisher()


def listen_then_change(source, publishing_to, path: str) -> list:
    publishing_to(path)
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    got: list = []
    subscriber = Subscriber(got.extend, run_id=run.pk)
    source.subscribe(subscriber)
    try:
        # The listener catches up on changes made before it subscribed, so no sleep.
        DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and not any(s.status == "in_progress" for s in got):
            time.sleep(0.05)
    finally:
        listener = source._listener
        source.unsubscribe(subscriber)
        if hasattr(listener, "thread"):
            listener.thread.join(PATIENCE)
    return [state.status for state in got]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_redis_thread_listener_delivers_what_writers_publish(publishing_to):
    from django_dataflows.live.redis import RedisEvents

    statuses = listen_then_change(RedisEvents(), publishing_to, REDIS)
    assert "in_progress" in statuses


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_postgres_listener_delivers_what_writers_notify(publishing_to):
    from django_dataflows.live.postgres import PostgresEvents

    statuses = listen_then_change(PostgresEvents(), publishing_to, POSTGRES)
    assert "in_progress" in statuses


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_redis_asyncio_listener_delivers_and_unsubscribes(publishing_to):
    from django_dataflows.live.redis import AsyncRedisListener, RedisEvents

    publishing_to(REDIS)
    source = RedisEvents()
    run = DataFlowRunFactory(status=RunStatus.PENDING)

    async def watch() -> list[str]:
        batches: asyncio.Queue = asyncio.Queue()
        subscriber = Subscriber(batches.put_nowait, run_id=run.pk)
        source.subscribe(subscriber)
        assert isinstance(source._listener, AsyncRedisListener)
        statuses: list[str] = []
        try:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(
                lambda: (
                    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS),
                    connection.close(),
                )
            )
            while "success" not in statuses:
                batch = await asyncio.wait_for(batches.get(), timeout=PATIENCE)
                statuses += [state.status for state in batch]
        finally:
            listener = source._listener
            source.unsubscribe(subscriber)
            with pytest.raises(asyncio.CancelledError):
                await listener.task
        return statuses

    assert "success" in asyncio.run(watch())


def test_a_redis_publish_that_fails_is_logged_not_raised(settings, caplog):
    from django_dataflows.live.redis import RedisEvents

    settings.DATAFLOWS = {"EVENTS_REDIS_URL": "redis://127.0.0.1:1/0"}
    RedisEvents().publish([1, 2])
    assert "Could not publish run changes [1, 2]" in caplog.text


def test_a_wsgi_stream_sends_keep_alives_and_changes(settings):
    from django_dataflows.live.streams import KEEPALIVE, sync_events

    settings.DATAFLOWS = {"SSE_KEEPALIVE": 0.05}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()
    events = sync_events(source, Stream(run_id=run.pk))
    assert next(events).startswith(b"event: snapshot")
    assert next(events) == KEEPALIVE
    (subscriber,) = source._subscribers
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED)
    subscriber.deliver(load_run_ids([run.pk]))
    assert next(events).startswith(b"event: run")
    with pytest.raises(StopIteration):
        next(events)  # the run ended: the stream closes
    assert source.subscriber_count == 0


def test_a_reconnect_to_a_finished_run_with_nothing_new_answers_204(watcher_client):
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    (state,) = load_run_ids([run.pk])
    url = f"/dataflows/api/runs/{run.pk}/events/"
    response = watcher_client.get(url, HTTP_LAST_EVENT_ID=str(state.latest))
    assert response.status_code == 204
    stream = watcher_client.get(url, HTTP_LAST_EVENT_ID=str(state.latest - 1))
    assert stream.status_code == 200
    assert b"event: run" in b"".join(stream.streaming_content)


@pytest.mark.django_db(transaction=True)
def test_runs_the_heartbeat_creates_are_announced(announced):
    from django_dataflows.scheduling import claim_due_flows

    flow = DataFlowFactory(next_run_at=LONG_AGO)
    with transaction.atomic():  # as the heartbeat claims: one short transaction
        claim = claim_due_flows()
    run = DataFlowRun.objects.get(data_flow=flow)
    assert [run.pk] in announced
    assert claim is not None
