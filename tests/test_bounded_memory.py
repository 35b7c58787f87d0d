"""Bounded memory: what one request or one client can make the server hold."""

from __future__ import annotations

import asyncio
import json

import pytest
from rest_framework.test import APIClient

from django_dataflows.live.base import load_run_ids
from django_dataflows.live.polling import PollingEvents
from django_dataflows.live.streams import RESYNC, AsyncInbox, Inbox, Stream, sync_events
from django_dataflows.models import DataFlowRun, DataFlowRunStep, RunStatus, StepStatus
from django_dataflows.validators import capped_json
from tests.factories import DataFlowFactory, DataFlowRunFactory, UserFactory

pytestmark = pytest.mark.django_db

BIG = {"rows": "x" * 100_000}  # within MAX_INPUT_BYTES, far over SUMMARY_FIELD_BYTES
TRUNCATED = {"truncated": True, "bytes": len(json.dumps(BIG))}


@pytest.fixture
def api() -> APIClient:
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_capped_json_keeps_small_values_and_says_how_large_a_big_one_was() -> None:
    assert capped_json({"a": 1}, 100) == {"a": 1}
    assert capped_json(None, 1) is None
    assert capped_json(BIG, 4096) == TRUNCATED


def test_the_runs_list_caps_large_fields_and_the_detail_has_them_whole(api) -> None:
    run = DataFlowRunFactory(status=RunStatus.SUCCESS, input=BIG, result=BIG)
    DataFlowRunStep.objects.create(
        run=run, position=1, name="one", status=StepStatus.SUCCESS, result=BIG
    )
    listed = api.get("/dataflows/api/runs/").json()["results"][0]
    assert listed["input"] == listed["result"] == listed["steps"][0]["result"] == TRUNCATED
    detail = api.get(f"/dataflows/api/runs/{run.pk}/").json()
    assert detail["input"] == detail["result"] == detail["steps"][0]["result"] == BIG


def test_the_flows_list_caps_large_configurations(api) -> None:
    flow = DataFlowFactory(configuration=BIG)
    assert api.get("/dataflows/api/flows/").json()["results"][0]["configuration"] == TRUNCATED
    assert api.get(f"/dataflows/api/flows/{flow.pk}/").json()["configuration"] == BIG


def test_live_events_carry_capped_payloads() -> None:
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS, input=BIG)
    (state,) = load_run_ids([run.pk])
    assert state.payload["input"] == TRUNCATED
    assert len(json.dumps(state.payload)) < 10_000


def test_a_client_that_does_not_read_gets_one_resync_instead_of_a_growing_queue(settings):
    settings.DATAFLOWS = {"SSE_CLIENT_QUEUE": 3}
    inbox = Inbox()
    batches = [[object()] for _ in range(50)]
    for batch in batches:
        inbox.put(batch)  # type: ignore[arg-type]
    # Full after two batches: one resync, then nothing more while it waits (it covers them).
    assert list(inbox.queue.queue) == [RESYNC]
    assert inbox.get(timeout=1) is RESYNC
    inbox.put(batches[0])  # type: ignore[arg-type]
    assert list(inbox.queue.queue) == [batches[0]]


def test_an_asyncio_client_queue_is_bounded_the_same_way(settings):
    settings.DATAFLOWS = {"SSE_CLIENT_QUEUE": 3}

    async def fill() -> list[object]:
        inbox = AsyncInbox()
        for _ in range(50):
            inbox.put([object()])  # type: ignore[list-item]
        held = [await inbox.get(1), await inbox.get(0.01)]
        inbox.put([1])  # type: ignore[list-item]
        return [*held, await inbox.get(1)]

    assert asyncio.run(fill()) == [RESYNC, None, [1]]


def test_a_stream_that_overflowed_sends_a_fresh_snapshot(settings):
    settings.DATAFLOWS = {"SSE_CLIENT_QUEUE": 2, "SSE_KEEPALIVE": 60}
    run = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    source = PollingEvents()
    events = sync_events(source, Stream(run_id=run.pk), max_seconds=3600)
    assert next(events).startswith(b"event: snapshot")
    (subscriber,) = source._subscribers
    for done in range(10):  # changes the client does not read meanwhile
        DataFlowRun.objects.filter(pk=run.pk).update(progress={"done": done})
        subscriber.deliver(load_run_ids([run.pk]))
    resync = next(events)
    assert resync.startswith(b"event: snapshot")
    assert b'"done":9' in resync  # the latest state: nothing is lost
    events.close()


def test_a_replay_past_its_bounds_is_a_snapshot_instead(settings):
    settings.DATAFLOWS = {"SSE_REPLAY_MAX_EVENTS": 2}
    runs = [DataFlowRunFactory(status=RunStatus.SUCCESS) for _ in range(3)]
    active = DataFlowRunFactory(status=RunStatus.IN_PROGRESS)
    stream = Stream(last_event_id=1)  # a client away since 1970
    (chunk,) = stream.opening()
    assert chunk.startswith(b"event: snapshot")
    data = json.loads(chunk.split(b"data: ", 1)[1])
    assert [run["id"] for run in data] == [active.pk]
    assert all(run.pk not in {item["id"] for item in data} for run in runs)


def test_a_replay_over_its_byte_bound_is_a_snapshot(settings):
    settings.DATAFLOWS = {"SSE_REPLAY_MAX_BYTES": 100}
    DataFlowRunFactory(status=RunStatus.SUCCESS)
    (chunk,) = Stream(last_event_id=1).opening()
    assert chunk.startswith(b"event: snapshot")
