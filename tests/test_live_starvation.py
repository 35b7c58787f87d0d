"""Streams cannot starve a WSGI site: real gunicorn processes, with twice as many streams
opened as the server has threads, still answer ``runs/`` and the heartbeat.

Before the limits, three open run pages stopped a three-worker gunicorn (and with it the
heartbeat cron calls) until the streams closed.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client

from django_dataflows.models import RunStatus
from tests.async_workers import WorkerProcess, wait_for
from tests.factories import DataFlowRunFactory, UserFactory
from tests.live_scenarios import restart_burst
from tests.sse import SSEClient, server_process

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: server kind → (threads that serve requests, DATAFLOWS for the server)
SERVERS = {
    "gunicorn-sync-3": (3, {}),  # one thread per worker: short streams
    "gunicorn-gthread-1": (1, {"SSE_WSGI_MAX_STREAMS": 0}),  # gthread's default: 1 thread
    "gunicorn-gthread-8": (8, {}),  # the default 4 held streams, the rest 503
}


@pytest.fixture(params=list(SERVERS))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WorkerProcess, int]]:
    kind = request.param
    _threads, dataflows = SERVERS[kind]
    process, port = server_process(
        kind,
        tmp_path_factory.mktemp(kind) / "server.log",
        DATAFLOWS_TEST_SETTINGS=json.dumps(dataflows),
        DATAFLOWS_TEST_SSE_KEEPALIVE="15",
    )
    with process:
        yield kind, process, port


@pytest.fixture
def cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="watcher", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def request(port: int, method: str, path: str, cookie: str = "") -> tuple[int, bytes]:
    """One request that must be answered (10 s is a generous bound on a loaded machine;
    a starved server never answers: it is the streams' lifetime or forever)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_twice_as_many_streams_as_threads_leave_the_site_and_heartbeat_answering(server, cookie):
    kind, _process, port = server
    threads, _ = SERVERS[kind]
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    streams = [SSEClient(port, path, cookie=cookie) for _ in range(2 * threads)]
    try:
        statuses = sorted(stream.status for stream in streams)
        held = [stream for stream in streams if stream.status == 200]
        for stream in held:
            assert stream.next_event().event == "snapshot"
        # Every client is answered: a stream, or 503 JSON with Retry-After.
        assert set(statuses) <= {200, 503}
        for stream in streams:
            if stream.status == 503:
                assert stream.headers["retry-after"] == "5"
                assert stream.headers["content-type"] == "application/json"
                assert b"SSE_WSGI_MAX_STREAMS" in stream.body()
                stream.close()  # as a browser does, to try again later

        status, body = request(port, "GET", "/dataflows/api/runs/", cookie)
        assert status == 200, body
        assert [listed["id"] for listed in json.loads(body)["results"]] == [run.pk]
        status, body = request(port, "POST", "/dataflows/heartbeat/")
        assert status == 200, body
        assert "flows_due" in json.loads(body)
    finally:
        for stream in streams:
            stream.close()


def test_a_short_stream_ends_with_a_retry_hint_and_the_reconnect_misses_nothing(cookie, tmp_path):
    process, port = server_process(
        "gunicorn-sync-3",
        tmp_path / "server.log",
        DATAFLOWS_TEST_SETTINGS="{}",
    )
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    with process:
        first = SSEClient(port, path, cookie=cookie)
        snapshot = first.next_event()
        assert snapshot.event == "snapshot"
        assert first.next_event() is None  # ended: the worker is free
        assert first.retry == 1000
        first.close()
        type(run).objects.filter(pk=run.pk).update(status=RunStatus.SUCCESS)
        again = SSEClient(port, path, cookie=cookie, last_event_id=snapshot.id)
        ended = again.events_until(lambda event: event.event == "run")[-1]
        assert ended.data["status"] == "success"
        again.close()


@pytest.mark.postgres
def test_held_wsgi_streams_give_their_database_connections_back(cookie, tmp_path):
    process, port = server_process(
        "gunicorn-gthread-8",
        tmp_path / "server.log",
        DATAFLOWS_TEST_SETTINGS="{}",
        DATAFLOWS_TEST_SSE_KEEPALIVE="15",
    )
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"

    def others() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    with process:
        streams = [SSEClient(port, path, cookie=cookie) for _ in range(4)]
        for stream in streams:
            assert stream.next_event().event == "snapshot"
        # Four streams open and waiting: the shared poller's connection, not one each.
        wait_for(lambda: others() <= 1, timeout=20, what="the streams' connections to close")
        for stream in streams:
            stream.close()


#: Clients of the burst test (the benchmark opens 300; 100 keeps the suite lean).
BURST = 100
#: The server's SSE_DB_CONNECTIONS in the burst test.
TURNS = 2


def test_a_burst_of_clients_under_uvicorn_all_get_their_snapshot(cookie, tmp_path):
    """Every browser reconnecting at once after a deploy: no 500, every snapshot, and on
    PostgreSQL no more database connections than ``SSE_DB_CONNECTIONS`` at any time
    (before, each opening stream took one: "sorry, too many clients already")."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event, Thread

    process, port = server_process("uvicorn", tmp_path / "server.log", DATAFLOWS_TEST_SETTINGS="{}")
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    path = f"/dataflows/api/runs/{run.pk}/events/"
    postgres = connection.vendor == "postgresql"
    peak = [0]
    done = Event()

    def watch_connections() -> None:
        with connection.temporary_connection() as cursor:
            while not done.is_set():
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
                peak[0] = max(peak[0], int(cursor.fetchone()[0]))
                done.wait(0.02)

    def open_one(_index: int) -> tuple[int, str]:
        stream = SSEClient(port, path, cookie=cookie, timeout=60)
        try:
            if stream.status != 200:
                return stream.status, stream.body().decode()
            event = stream.next_event(timeout=60)
            return 200, event.event if event else "closed"
        finally:
            stream.close()

    connection.close()  # the test's own: only the server's connections are counted
    with process:
        watcher = Thread(target=watch_connections) if postgres else None
        if watcher:
            watcher.start()
        try:
            with ThreadPoolExecutor(max_workers=BURST) as pool:
                outcomes = list(pool.map(open_one, range(BURST)))
        finally:
            done.set()
            if watcher:
                watcher.join()
    assert outcomes == [(200, "snapshot")] * BURST
    if postgres:
        # The streams' turns and the shared poller, plus backends of connections just
        # closed that PostgreSQL still lists while they exit (every opening closes its
        # connection). Before the turns: one per opening client, 99 of these 100.
        assert peak[0] <= TURNS + 6, peak[0]


@pytest.mark.postgres  # its point is the connections 100 reconnecting clients hold
def test_after_a_restart_every_client_reconnects_at_once_and_gets_what_changed(cookie, tmp_path):
    """The server process restarts (a deploy) while clients watch a run; they all come
    back at once with ``Last-Event-ID``: each is sent what changed while it was away, no
    500, and no more database connections than ``SSE_DB_CONNECTIONS`` (plus the poller)
    however many reconnect."""
    settings = json.dumps({"SSE_DB_CONNECTIONS": TURNS})
    process, port = server_process(
        "uvicorn", tmp_path / "server.log", DATAFLOWS_TEST_SETTINGS=settings
    )
    with process:
        reconnected = restart_burst(process, port, cookie, BURST)
    outcomes = reconnected.outcomes
    assert {(status, event) for status, event, _data in outcomes} == {(200, "run")}
    assert all(data["progress"] == {"done": 1} for _status, _event, data in outcomes)
    assert reconnected.peak_connections is not None
    assert reconnected.peak_connections <= TURNS + 6, reconnected.peak_connections
