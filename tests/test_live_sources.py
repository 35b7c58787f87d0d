"""The publishing event sources through a real uvicorn and gunicorn: PostgreSQL
``LISTEN/NOTIFY`` and Redis pub/sub, each published after commit by this process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import Client

from django_dataflows.apps import connect_live_publisher
from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import WorkerProcess, wait_for
from tests.factories import DataFlowRunFactory, UserFactory
from tests.sse import SSEClient, server_process

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REDIS_URL = "redis://127.0.0.1:6379/7"
POSTGRES = "django_dataflows.live.postgres.PostgresEvents"
REDIS = "django_dataflows.live.redis.RedisEvents"


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("uvicorn", POSTGRES), marks=pytest.mark.postgres, id="uvicorn-postgres"),
        pytest.param(("uvicorn", REDIS), marks=pytest.mark.redis, id="uvicorn-redis"),
        pytest.param(("gunicorn", REDIS), marks=pytest.mark.redis, id="gunicorn-redis"),
    ],
)
def server(
    request: pytest.FixtureRequest, django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, int, str]]:
    kind, source = request.param
    if source == POSTGRES and connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")  # the postgres mark fails or skips it first
    log = tmp_path_factory.mktemp(kind) / "server.log"
    process, port = server_process(
        kind, log, DATAFLOWS_TEST_EVENTS=source, DATAFLOWS_TEST_EVENTS_REDIS_URL=REDIS_URL
    )
    with process:
        yield process, port, source


@pytest.fixture
def publishing(server, settings) -> Iterator[str]:
    """This process publishes its writes to the server's source, as a worker would."""
    source = server[2]
    settings.DATAFLOWS = {**settings.DATAFLOWS, "EVENTS": source, "EVENTS_REDIS_URL": REDIS_URL}
    connect_live_publisher()
    yield source
    settings.DATAFLOWS = {
        key: value for key, value in settings.DATAFLOWS.items() if key != "EVENTS"
    }
    connect_live_publisher()


@pytest.fixture
def cookie() -> str:
    client = Client()
    client.force_login(UserFactory(username="watcher", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


def subscriptions(source: str) -> int:
    """How many subscriptions the source holds on its service right now."""
    if source == REDIS:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(dict(client.pubsub_numsub("dataflows:runs"))[b"dataflows:runs"])
        finally:
            client.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'")
        return int(cursor.fetchone()[0])


def test_a_committed_change_reaches_the_stream_and_the_end_closes_it(server, publishing, cookie):
    _process, port, _source = server
    run = DataFlowRunFactory(status=RunStatus.PENDING)
    stream = SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie)
    assert stream.next_event().data["status"] == "pending"
    DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.IN_PROGRESS)
    assert stream.events_until(lambda event: event.event == "run")[-1].data["status"] == (
        "in_progress"
    )
    run.refresh_from_db()
    run.status = RunStatus.SUCCESS
    run.save(update_fields=["status"])
    assert stream.events_until(lambda event: event.event == "run")[-1].data["status"] == "success"
    assert stream.next_event() is None
    stream.close()


def test_clients_that_go_away_leave_no_subscription_behind(server, publishing, cookie):
    _process, port, source = server
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    # The previous test's stream may still be letting its subscription go.
    wait_for(lambda: subscriptions(source) == 0, what="no subscription")
    before = 0
    streams = [
        SSEClient(port, f"/dataflows/api/runs/{run.pk}/events/", cookie=cookie) for _ in range(4)
    ]
    for stream in streams:
        stream.next_event()
    # One subscription for the process, whatever the number of clients.
    wait_for(lambda: subscriptions(source) == before + 1, what="one subscription")
    for stream in streams:
        stream.close()
    wait_for(lambda: subscriptions(source) == before, what="the subscription to end")
