"""Every stream ends when its client leaves: 500 connect/disconnect cycles (1,000 in
``bench/live_memory.py``) against a real uvicorn process, with changes flowing while the
clients leave.

Before, on Python 3.11, some streams never ended (1 in 300 to 1,000 cycles with polling, 4 in
200 with Redis): each kept its subscriber, the poller or the Redis subscription, and a
request task, forever. The server's own state decides (``tests.live_probe``): no
subscriber, no listener, no live thread or task, no more request tasks than when idle, and
the process holds no connection to Redis or the database.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import WorkerProcess, wait_for
from tests.factories import DataFlowRunFactory, UserFactory
from tests.sse import SSEClient, remote_connections, server_process, server_state

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REDIS_URL = "redis://127.0.0.1:6379/7"
POLLING = "django_dataflows.live.polling.PollingEvents"
REDIS = "django_dataflows.live.redis.RedisEvents"
#: Connect/disconnect cycles per source, by this many clients at a time.
CYCLES = int(os.environ.get("DATAFLOWS_TEST_CLEANUP_CYCLES", "500"))
CLIENTS = 8


@pytest.fixture(
    params=[
        pytest.param(POLLING, id="polling"),
        pytest.param(REDIS, marks=pytest.mark.redis, id="redis"),
    ]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, int, str]]:
    source = request.param
    process, port = server_process(
        "uvicorn",
        tmp_path_factory.mktemp("cleanup") / "server.log",
        DATAFLOWS_TEST_EVENTS=source,
        DATAFLOWS_TEST_EVENTS_REDIS_URL=REDIS_URL,
        DATAFLOWS_TEST_SSE_POLL_INTERVAL="0.02",
    )
    with process:
        yield process, port, source


@pytest.fixture
def cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="watcher", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def changing(run: DataFlowRun, source: str, stop: threading.Event) -> None:
    """Change the run until told to stop, publishing each change as a worker would."""
    publish: Any = None
    if source == REDIS:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        publish = client.publish
    done = 0
    try:
        while not stop.is_set() and done < 1_000_000:
            done += 1
            DataFlowRun.objects.filter(pk=run.pk).update(progress={"done": done})
            if publish is not None:
                publish("dataflows:runs", str(run.pk))
            stop.wait(0.005)
    finally:
        connection.close()
        if publish is not None:
            client.close()


def test_every_stream_ends_when_its_client_leaves(server, cookie):
    process, port, source = server
    pid = process.process.pid
    idle = {**server_state(port), "resyncs": 0, "dropped": 0}
    assert idle["subscribers"] == 0
    assert not idle["listening"]
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    paths = [f"/dataflows/api/runs/{run.pk}/events/", "/dataflows/api/events/"]

    def cycle(index: int) -> str:
        stream = SSEClient(port, paths[index % 2], cookie=cookie)
        try:
            event = stream.next_event()
            if index % 3 == 0:  # some leave after a change too, some right after the snapshot
                event = stream.next_event()
            return event.event if event else "closed"
        finally:
            stream.close()

    stop = threading.Event()
    writer = threading.Thread(target=changing, args=(run, source, stop))
    writer.start()
    try:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            outcomes = list(pool.map(cycle, range(CYCLES)))
    finally:
        stop.set()
        writer.join()
    assert set(outcomes) <= {"snapshot", "run", "step"}, set(outcomes)

    def ended() -> bool:
        state = server_state(port)
        return {**state, "resyncs": 0, "dropped": 0} == idle

    try:
        wait_for(ended, what="every stream to end")
    except TimeoutError:
        raise AssertionError(f"Left behind: {server_state(port)} (idle: {idle})") from None
    # Nothing held outside the process either: no Redis subscription, no database connection.
    assert remote_connections(pid, 6379) == 0
    assert remote_connections(pid, 5432) == 0
