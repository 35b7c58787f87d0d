"""One live status stream: what it has sent, and the Server-Sent Events it sends next.

:class:`Stream` holds the logic both servers share; :func:`async_events` (ASGI: an async
generator, no thread per client) and :func:`sync_events` (WSGI: a generator, which holds
the worker thread) only wait for changes differently. Both subscribe when they start and
unsubscribe in ``finally``, which runs when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import Q

from django_dataflows.conf import app_settings
from django_dataflows.live.base import (
    LOOKBACK,
    MICROSECOND,
    EventSource,
    RunState,
    Subscriber,
    database_now,
    fingerprint,
    from_micros,
    in_pool_thread,
    load_run_ids,
    load_runs,
    runs_queryset,
    threadsafe_queue_deliver,
    to_micros,
)

KEEPALIVE = b": keep-alive\n\n"
#: Most runs one replay sends (a client that was away long gets the newest changes).
REPLAY_LIMIT = 500


def format_event(event: str, data: Any, event_id: int) -> bytes:
    """One Server-Sent Event; JSON data is one line, so it needs no ``data:`` splitting."""
    text = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"))
    return f"event: {event}\nid: {event_id}\ndata: {text}\n\n".encode()


class Stream:
    """The state of one client's stream: of one run, or of every run (of one flow)."""

    def __init__(
        self,
        *,
        run_id: int | None = None,
        flow_id: int | None = None,
        flow_ids: frozenset[int] | None = None,
        backtrace: bool = False,
        last_event_id: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.flow_id = flow_id
        #: The only flows whose runs this client may see (an owner's); ``None``: any.
        self.flow_ids = flow_ids
        self.backtrace = backtrace
        self.last_event_id = last_event_id
        self.cursor = last_event_id or 0
        self.finished = False
        self._seen: dict[tuple[str, int], tuple[int, str]] = {}

    def subscriber(self, deliver: Any) -> Subscriber:
        return Subscriber(deliver, run_id=self.run_id, flow_id=self.flow_id, flow_ids=self.flow_ids)

    # -- the first events --------------------------------------------------------------

    def opening(self) -> list[bytes]:
        """The snapshot, or after a reconnect (``Last-Event-ID``) what changed since."""
        if self.last_event_id is None:
            return self._snapshot()
        return self._replay(from_micros(self.last_event_id) - LOOKBACK)

    def _snapshot(self) -> list[bytes]:
        if self.run_id is not None:
            states = load_run_ids([self.run_id])
            if not states:  # deleted since the view looked
                self.finished = True
                return []
            state = states[0]
            self._remember(state)
            self.cursor = max(self.cursor, state.latest)
            self.finished = state.finished
            return [format_event("snapshot", self._payload(state), self.cursor)]
        self.cursor = max(self.cursor, to_micros(database_now()))
        runs = runs_queryset().active().order_by("created_at", "pk")
        if self.flow_id is not None:
            runs = runs.filter(data_flow_id=self.flow_id)
        if self.flow_ids is not None:
            runs = runs.filter(data_flow_id__in=self.flow_ids)
        states = load_runs(runs)
        for state in states:
            self._remember(state)
            self.cursor = max(self.cursor, state.latest)
        data = [self._payload(state) for state in states]
        return [format_event("snapshot", data, self.cursor)]

    def _replay(self, since: datetime) -> list[bytes]:
        if self.run_id is not None:
            states = load_run_ids([self.run_id])
        else:
            changed = Q(updated_at__gte=since) | Q(steps__updated_at__gte=since)
            runs = runs_queryset().filter(changed)
            if self.flow_id is not None:
                runs = runs.filter(data_flow_id=self.flow_id)
            if self.flow_ids is not None:
                runs = runs.filter(data_flow_id__in=self.flow_ids)
            ids = list(runs.order_by().values_list("pk", flat=True).distinct()[:REPLAY_LIMIT])
            states = load_run_ids(ids)
        return self.receive(states, since=to_micros(since))

    # -- changes -------------------------------------------------------------------------

    def receive(self, states: list[RunState], since: int | None = None) -> list[bytes]:
        """The events for these changed runs that this client has not had yet."""
        chunks: list[bytes] = []
        for state in sorted(states, key=lambda state: state.updated):
            for step in state.steps:
                if since is not None and step.updated < since:
                    continue
                if self._fresh(("step", step.step_id), step.updated, step.payload):
                    self.cursor = max(self.cursor, step.updated)
                    chunks.append(format_event("step", step.payload, self.cursor))
            payload = self._payload(state)
            fresh = since is None or state.updated >= since
            if fresh and self._fresh(("run", state.run_id), state.updated, payload):
                self.cursor = max(self.cursor, state.updated)
                chunks.append(format_event("run", payload, self.cursor))
            if self.run_id is not None and state.finished:
                self.finished = True
        return chunks

    def _payload(self, state: RunState) -> dict[str, Any]:
        return state.payload_for(backtrace=self.backtrace)

    def _remember(self, state: RunState) -> None:
        self._fresh(("run", state.run_id), state.updated, self._payload(state))
        for step in state.steps:
            self._fresh(("step", step.step_id), step.updated, step.payload)

    def _fresh(self, key: tuple[str, int], updated: int, payload: dict[str, Any]) -> bool:
        """Whether this state of a row is new to the client; remember it if so."""
        known = self._seen.get(key)
        mark = fingerprint(payload)
        if known is not None and (known[0] > updated or known == (updated, mark)):
            return False
        self._seen[key] = (updated, mark)
        if len(self._seen) > 5000:
            self._forget_old()
        return True

    def _forget_old(self) -> None:
        # Rows older than the poller's window are never delivered again with old stamps.
        horizon = self.cursor - 2 * (LOOKBACK // MICROSECOND)
        self._seen = {key: value for key, value in self._seen.items() if value[0] >= horizon}


async def release_request_thread() -> None:
    """Let the thread Django's ASGI handler keeps for this request go.

    Django runs a request's sync parts (middleware, a sync view) on a thread of the
    request's own (asgiref's ``ThreadSensitiveContext``), kept until the response ends:
    for a stream, hours of an idle thread and a database connection per client. Close the
    connections in that thread and let it end; a sync call later in this request (the
    ``request_finished`` receivers) starts a new one, which ends with the request.
    """
    await sync_to_async(connections.close_all)()
    # asgiref internals (3.x): without them the thread simply stays until the stream ends.
    contexts = getattr(SyncToAsync, "thread_sensitive_context", None)
    executors = getattr(SyncToAsync, "context_to_thread_executor", None)
    if contexts is None or executors is None:
        return
    try:
        context = contexts.get()
    except LookupError:
        return
    executor = executors.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


async def async_events(source: EventSource, stream: Stream) -> AsyncIterator[bytes]:
    """The stream under ASGI: waits on an asyncio queue, holding no thread."""
    batches: asyncio.Queue[list[RunState]] = asyncio.Queue()
    subscriber = stream.subscriber(threadsafe_queue_deliver(asyncio.get_running_loop(), batches))
    source.subscribe(subscriber)
    try:
        opening = await in_pool_thread(stream.opening)
        await release_request_thread()
        for chunk in opening:
            yield chunk
        keepalive = app_settings.SSE_KEEPALIVE
        while not stream.finished:
            try:
                batch = await asyncio.wait_for(batches.get(), timeout=keepalive)
            except TimeoutError:
                yield KEEPALIVE
                continue
            for chunk in stream.receive(batch):
                yield chunk
    finally:
        source.unsubscribe(subscriber)


def sync_events(source: EventSource, stream: Stream) -> Iterator[bytes]:
    """The stream under WSGI: the worker thread waits on a queue between events."""
    batches: queue.Queue[list[RunState]] = queue.Queue()
    subscriber = stream.subscriber(batches.put)
    source.subscribe(subscriber)
    try:
        yield from stream.opening()
        keepalive = app_settings.SSE_KEEPALIVE
        while not stream.finished:
            try:
                batch = batches.get(timeout=keepalive)
            except queue.Empty:
                yield KEEPALIVE
                continue
            yield from stream.receive(batch)
    finally:
        source.unsubscribe(subscriber)
