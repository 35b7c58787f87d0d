"""Streams that cannot starve the site, in-process: the WSGI stream slots and lifetime,
the database turns, and request values that must never cut a stream or answer 500."""

from __future__ import annotations

import threading

import pytest
from django.core import signals
from django.db import close_old_connections, connection
from django.test import Client

from django_dataflows.live.base import load_run_ids
from django_dataflows.live.limits import (
    StreamsBusy,
    database_turn,
    give_back_connections,
    wsgi_stream_slots,
)
from django_dataflows.live.polling import PollingEvents
from django_dataflows.live.streams import RECONNECT, Stream, sync_events
from django_dataflows.models import DataFlowRun, RunStatus
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def watcher() -> Client:
    client = Client()
    client.force_login(UserFactory(username="watcher", is_superuser=True, is_staff=True))
    return client


def close(response) -> None:
    """What the server does when the client goes, read or not (without the end of request
    closing the test's own database connection, as Django's test client does)."""
    signals.request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        signals.request_finished.connect(close_old_connections)


#: What a threaded WSGI server (gunicorn's gthread, runserver) says of itself.
THREADED = {"wsgi.multithread": True}


def open_stream(client: Client, path: str, **extra: object):
    return client.get(path, HTTP_ACCEPT="text/event-stream", **{**THREADED, **extra})


def test_a_wsgi_process_serves_at_most_its_streams_then_answers_503_json(watcher, settings):
    settings.DATAFLOWS = {"SSE_WSGI_MAX_STREAMS": 2}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    first, second = open_stream(watcher, path), open_stream(watcher, path)
    assert (first.status_code, second.status_code) == (200, 200)

    refused = open_stream(watcher, path)
    assert refused.status_code == 503
    assert refused["Retry-After"] == "5"
    assert "SSE_WSGI_MAX_STREAMS" in refused.json()["detail"]
    assert open_stream(watcher, "/dataflows/api/events/").status_code == 503

    close(first)
    again = open_stream(watcher, path)
    assert again.status_code == 200
    close(second)
    close(again)
    assert wsgi_stream_slots.open == 0


def test_a_slot_is_given_back_once_however_often_it_is_closed(watcher, settings):
    settings.DATAFLOWS = {"SSE_WSGI_MAX_STREAMS": 1}
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    response = open_stream(watcher, f"/dataflows/api/runs/{run.pk}/events/")
    assert wsgi_stream_slots.open == 1
    assert b"event: snapshot" in b"".join(response.streaming_content)  # ends with its run
    close(response)
    close(response)
    assert wsgi_stream_slots.open == 0


@pytest.mark.parametrize("extra", [{"wsgi.multithread": False}, {}])
def test_a_single_threaded_wsgi_server_gets_short_streams(watcher, settings, extra):
    settings.DATAFLOWS = {"SSE_WSGI_MAX_STREAMS": 1}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    streams = [watcher.get(path, **extra) for _ in range(3)]  # more than the slots
    for response in streams:
        assert response.status_code == 200
        body = b"".join(response.streaming_content)  # it ends: the worker is free again
        assert body.startswith(b"event: snapshot")
        assert body.endswith(RECONNECT)
    assert wsgi_stream_slots.open == 0


def test_no_held_streams_at_all_means_short_streams(watcher, settings):
    settings.DATAFLOWS = {"SSE_WSGI_MAX_STREAMS": 0}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    response = open_stream(watcher, f"/dataflows/api/runs/{run.pk}/events/")
    assert b"".join(response.streaming_content).endswith(RECONNECT)


def test_a_wsgi_stream_ends_after_its_lifetime_with_a_retry_hint(settings):
    settings.DATAFLOWS = {"SSE_KEEPALIVE": 60}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()
    events = list(sync_events(source, Stream(run_id=run.pk), max_seconds=0))
    assert events[0].startswith(b"event: snapshot")
    assert events[-1] == RECONNECT == b"retry: 1000\n\n"
    assert source.subscriber_count == 0


def test_a_wsgi_stream_delivers_until_its_lifetime_then_says_when_to_reconnect(settings):
    settings.DATAFLOWS = {"SSE_KEEPALIVE": 60}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()
    stream = Stream(run_id=run.pk)
    events = sync_events(source, stream, max_seconds=3600)
    assert next(events).startswith(b"event: snapshot")
    (subscriber,) = source._subscribers
    DataFlowRun.objects.filter(pk=run.pk).update(progress={"done": 1})
    subscriber.deliver(load_run_ids([run.pk]))
    change = next(events)
    assert change.startswith(b"event: run")
    events.close()
    assert source.subscriber_count == 0


@pytest.mark.django_db(transaction=True)
def test_a_wsgi_stream_gives_its_database_connection_back_after_the_snapshot(settings):
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()
    events = sync_events(source, Stream(run_id=run.pk), max_seconds=3600)
    connection.ensure_connection()
    assert connection.connection is not None
    assert next(events).startswith(b"event: snapshot")
    assert connection.connection is None  # closed: the stream waits holding none
    events.close()


def test_a_transaction_keeps_its_connection():
    connection.ensure_connection()
    give_back_connections()  # the test's own transaction is open
    assert connection.connection is not None


def test_database_turns_are_bounded_and_a_long_wait_is_busy(settings):
    settings.DATAFLOWS = {"SSE_DB_CONNECTIONS": 1, "SSE_DB_WAIT": 0.01}
    inside = threading.Event()
    leave = threading.Event()
    outcome: list[str] = []

    def hold() -> None:
        with database_turn():
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(30)
    try:
        with database_turn():
            outcome.append("entered")
    except StreamsBusy:
        outcome.append("busy")
    leave.set()
    holder.join(30)
    with database_turn():
        outcome.append("entered")
    assert outcome == ["busy", "entered"]


def test_a_busy_database_turn_answers_503_json(watcher, settings):
    settings.DATAFLOWS = {"SSE_DB_CONNECTIONS": 1, "SSE_DB_WAIT": 0.01}
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with database_turn():
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(30)
    try:
        response = watcher.get("/dataflows/api/events/")
    finally:
        leave.set()
        holder.join(30)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "try again" in response.json()["detail"]


# -- values that must never cut a stream or answer 500 -------------------------------------


@pytest.mark.parametrize(
    "value",
    ["²", "1²", "9" * 4301, "9" * 20, "1" * 30, "-5", "1e9", "٣"],
)
def test_a_strange_last_event_id_starts_the_stream_afresh(watcher, value):
    run = DataFlowRunFactory(status=RunStatus.SUCCESS)
    response = watcher.get(f"/dataflows/api/runs/{run.pk}/events/", HTTP_LAST_EVENT_ID=value)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body.startswith(b"event: snapshot")
    events = watcher.get("/dataflows/api/events/", HTTP_LAST_EVENT_ID=value)
    assert events.status_code == 200
    close(events)


@pytest.mark.parametrize("value", ["²", "9" * 4301, "9" * 25, "99999999999999999999", "-1"])
def test_a_strange_flow_filter_is_400_json(watcher, value):
    DataFlowFactory()
    response = watcher.get(f"/dataflows/api/events/?flow={value}")
    assert response.status_code == 400
    assert list(response.json()) == ["flow"]
