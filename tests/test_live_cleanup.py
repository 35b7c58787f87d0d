"""Every stream ends when its client leaves: 500 connect/disconnect cycles (1,000 in
``bench/live_memory.py``) against a real uvicorn process, with changes flowing while the
clients leave.

Before, on Python 3.11, some streams never ended (1 in 300 to 1,000 cycles with polling, 4 in
200 with Redis): each kept its subscriber, the poller or the Redis subscription, and a
request task, forever. The server's own state decides (``tests.live_probe``): no
subscriber, no listener, no live thread or task, no more request tasks than when idle, and
the process holds no connection to Redis or the database.

PostgreSQL only: the streams' code is the same on SQLite, and the database connections
this test counts are PostgreSQL's (the cycles cost half a minute per run of the suite).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.test import Client

from tests.async_workers import WorkerProcess, wait_for
from tests.factories import UserFactory
from tests.live_scenarios import REDIS, REDIS_URL, cycles, idle_state, wait_until_idle
from tests.sse import remote_connections, server_process, server_state

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

POLLING = "django_dataflows.live.polling.PollingEvents"
#: Connect/disconnect cycles per source, by this many clients at a time.
CYCLES = int(os.environ.get("DATAFLOWS_TEST_CLEANUP_CYCLES", "500"))


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


def test_every_stream_ends_when_its_client_leaves(server, cookie):
    process, port, source = server
    pid = process.process.pid
    idle = idle_state(port)
    assert idle["subscribers"] == 0
    assert not idle["listening"]
    outcomes = cycles(port, cookie, source, CYCLES)
    assert set(outcomes) <= {"snapshot", "run", "step"}, set(outcomes)
    ended = wait_until_idle(port, idle)
    try:
        wait_for(ended, what="every stream to end")
    except TimeoutError:
        raise AssertionError(f"Left behind: {server_state(port)} (idle: {idle})") from None
    # Nothing held outside the process either: no Redis subscription, no database connection.
    # The last stream's thread closes its connection just after it leaves the subscribers,
    # so each is waited for (a connection kept forever still fails).
    for port_, service in ((6379, "Redis"), (5432, "the database")):
        try:
            wait_for(lambda port_=port_: remote_connections(pid, port_) == 0, what=service)
        except TimeoutError:
            raise AssertionError(
                f"{remote_connections(pid, port_)} connection(s) to {service} left open"
            ) from None
