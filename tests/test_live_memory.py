"""Bounded memory under live status: a real uvicorn process on PostgreSQL, runs with
1 MB inputs changing, five clients replaying ``events/`` from ``Last-Event-ID: 1`` and five
that never read (see ``tests.live_scenarios``).

Before the limits the same took the server from 179 MB to 1.37 GB (and it stayed at
1.25 GB). Decided by events, not speed: the scenario runs until the server reports that
every never-reading client's queue overflowed and that further changes for them were
dropped; the server's peak and final resident memory then stay within a bound
proportional to the limits (events carry capped payloads, a client's queue is capped),
however long that took.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.test import Client

from tests.async_workers import WorkerProcess
from tests.factories import UserFactory
from tests.live_scenarios import big_runs, scenario
from tests.sse import server_process

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MB = 1024 * 1024
#: What the scenario may add to the server's memory at its peak, and keep after: the
#: issue's aim (+100 MB). What the limits allow is far less: 10 clients' queues of at most
#: SSE_CLIENT_QUEUE batches of 40 events of about 5 KB (capped payloads) are 20 MB at the
#: default 100, 2 MB here; loading a change reads no 1 MB input. Measured: +38 MB with the
#: default queue (bench/live_memory.py); +650 MB when the loads still read the 1 MB inputs
#: to cap them; +1.2 GB before the limits.
PEAK_BOUND = 100 * MB
AFTER_BOUND = 100 * MB


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[WorkerProcess, int]]:
    # A smaller client queue than the default (100) fills sooner; the bound is the same.
    settings = json.dumps({"SSE_CLIENT_QUEUE": 10})
    process, port = server_process(
        "uvicorn", tmp_path / "server.log", DATAFLOWS_TEST_SETTINGS=settings
    )
    with process:
        yield process, port


def test_replaying_and_never_reading_clients_leave_the_server_memory_bounded(server):
    process, port = server
    client = Client()
    client.force_login(UserFactory(username="watcher", is_staff=True, is_superuser=True))
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    ids = big_runs(40)
    # The server's first stream and list page (imports, pools), outside the measure.
    warm = client.get("/dataflows/api/runs/")
    assert warm.status_code == 200

    outcome = scenario(process.process.pid, port, cookie, ids)

    assert outcome.errors == []
    # Each replaying client got the present state and then changes.
    assert set(outcome.first_events) <= {"snapshot", "run", "step"}
    assert min(outcome.replayed) >= 5
    assert outcome.resyncs >= 5
    assert outcome.peak - outcome.before < PEAK_BOUND, outcome
    assert outcome.after - outcome.before < AFTER_BOUND, outcome
