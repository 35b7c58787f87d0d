"""Live status through real servers: uvicorn (ASGI), gunicorn with threads and runserver
(WSGI), each a subprocess on the test database, read over a socket as a browser would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client

from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import WorkerProcess, wait_for
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory
from tests.sse import (
    SERVERS,
    SSEClient,
    server_process,
    serving_pid,
    settled_thread_count,
    thread_count,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, int]]:
    kind = request.param
    process, port = server_process(kind, tmp_path_factory.mktemp(kind) / "server.log")
    with process:
        yield process, port


@pytest.fixture
def cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="watcher", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def test_a_run_stream_sends_a_snapshot_then_changes_then_closes_after_the_end(server, cookie):
    _process, port = server
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    stream = SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie)
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"

    snapshot = stream.next_event()
    assert (snapshot.event, snapshot.data["id"], snapshot.data["status"]) == (
        "snapshot",
        run.pk,
        "pending",
    )
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)
    started = stream.events_until(lambda event: event.event == "run")[-1]
    assert started.data["status"] == "in_progress"
    assert int(started.id) > int(snapshot.id)

    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS, result={"rows": 3})
    ended = stream.events_until(lambda event: event.event == "run")[-1]
    assert (ended.data["status"], ended.data["result"]) == ("success", {"rows": 3})
    assert stream.next_event() is None  # the server closed the stream
    stream.close()


def test_many_clients_watch_one_run(server, cookie):
    _process, port = server
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    streams = [
        SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie) for _ in range(5)
    ]
    for stream in streams:
        assert stream.next_event().event == "snapshot"
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.FAILED, error_message="boom")
    for stream in streams:
        ended = stream.events_until(lambda event: event.event == "run")[-1]
        assert (ended.data["status"], ended.data["error_message"]) == ("failed", "boom")
        stream.close()


def test_keep_alive_comments_flow_while_nothing_changes(server, cookie):
    _process, port = server
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    stream = SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie)
    stream.next_event()
    assert stream.file.readline() == b": keep-alive\n"  # the servers send one every second
    assert stream.file.readline() == b"\n"
    stream.close()


def test_a_reconnect_gets_what_changed_and_a_finished_run_then_answers_204(server, cookie):
    _process, port = server
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    stream = SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie)
    snapshot = stream.next_event()
    stream.close()

    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
    again = SSEClient(
        port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie, last_event_id=snapshot.id
    )
    ended = again.events_until(lambda event: event.event == "run")[-1]
    assert ended.data["status"] == "success"
    assert again.next_event() is None
    again.close()

    last = SSEClient(
        port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie, last_event_id=ended.id
    )
    assert last.status == 204
    last.close()


def test_the_all_runs_stream_sends_active_runs_then_every_change(server, cookie):
    _process, port = server
    flow = DataFlowFactory()
    active = DataFlowRunFactory(data_flow=flow, status=RunStatus.IN_PROGRESS)
    DataFlowRunFactory(data_flow=flow, status=RunStatus.SUCCESS)
    other = DataFlowRunFactory(status=RunStatus.PENDING)
    stream = SSEClient(port, f"/dataflows/api/events/?flow={flow.pk}", cookie=cookie)
    snapshot = stream.next_event()
    assert snapshot.event == "snapshot"
    assert [run["id"] for run in snapshot.data] == [active.pk]

    DataFlowRun.objects.filter(pk=other.pk).update(status=RunStatus.CANCELLED)
    DataFlowRun.objects.filter(pk=active.pk).update(progress={"done": 2, "total": 4})
    events = stream.events_until(
        lambda event: event.data.get("progress") == {"done": 2, "total": 4}
    )
    # Only the flow's runs; recent changes from before the connection may come again
    # (delivery is at least once), never another flow's.
    assert {event.data["flow"] for event in events} == {flow.pk}
    assert other.pk not in {event.data["id"] for event in events}
    stream.close()


def test_errors_are_json_even_to_an_event_stream_client(server, cookie):
    _process, port = server
    anonymous = SSEClient(port, "/dataflows/api/events/")
    assert anonymous.status in (401, 403)
    assert anonymous.headers["content-type"] == "application/json"
    assert b"credentials were not provided" in anonymous.body()
    anonymous.close()
    missing = SSEClient(port, "/dataflows/api/runs/999999/events/", cookie=cookie)
    assert (missing.status, missing.body()) == (404, b'{"detail": "Not found."}')
    missing.close()


def test_a_client_that_goes_away_leaves_no_thread_behind(server, cookie):
    process, port = server
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    pid = serving_pid(process.process.pid)
    path = f"/dataflows/api/runs/{run.pk}/events/"

    def watch_then_leave(clients: int = 3) -> int:
        streams = [SSEClient(port, path, cookie=cookie) for _ in range(clients)]
        for stream in streams:
            stream.next_event()
        busy = settled_thread_count(pid, quiet=1.5)  # request threads of the connects end
        for stream in streams:
            stream.close()
        return busy

    # ASGI holds no thread per client: watch with more clients than a WSGI pool has.
    clients = 12 if process.name == "uvicorn" else 3
    # Once first, so that pools a server keeps (gunicorn's threads, the loop's) exist.
    watch_then_leave(clients)
    # A closed client is noticed at a write that fails: the second keep-alive after it.
    idle = settled_thread_count(pid, quiet=3.5)
    busy = watch_then_leave(clients)
    assert busy > idle  # the shared poller (and under WSGI, client threads)
    if process.name == "uvicorn":
        # The poller, and at most one more thread of the loop's shared pool: not one per
        # client (there are 12).
        assert busy <= idle + 2
    # Once they have gone, their threads have too. Under uvicorn the loop's shared pool may
    # keep a thread it started meanwhile (it never shrinks), but never one per client: 12
    # clients left, at most 1 thread may stay.
    limit = idle + 1 if process.name == "uvicorn" else idle
    wait_for(lambda: thread_count(pid) <= limit, what="threads to end")
