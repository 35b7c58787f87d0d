"""One live status stream: what it has sent, and the Server-Sent Events it sends next.

:class:`Stream` holds the logic both servers share; :func:`async_events` (ASGI: an async
generator, no thread per client) and :func:`sync_events` (WSGI: a generator, which holds
the worker thread) only wait for changes differently. Both subscribe when they start and
unsubscribe in ``finally``, which runs when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import Max, Q

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
    to_micros,
)
from django_dataflows.live.limits import RECONNECT_MS, StreamsBusy, StreamSlot, database_turn
from django_dataflows.models import DataFlowRunLog

KEEPALIVE = b": keep-alive\n\n"
#: Sent before a stream ends on purpose (its WSGI lifetime is up, or the server is busy):
#: the browser reconnects after that many milliseconds, with ``Last-Event-ID``.
RECONNECT = f"retry: {RECONNECT_MS}\n\n".encode()


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
        #: One run's stream: the position of the last log line sent (or not to send again).
        self.log_after = 0

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
            # The log so far is the logs endpoint's; the stream sends the lines that follow.
            self.log_after = _last_log_position(self.run_id)
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
            self.log_after = _last_log_position(self.run_id, before=since)
        else:
            changed = Q(updated_at__gte=since) | Q(steps__updated_at__gte=since)
            runs = runs_queryset().filter(changed)
            if self.flow_id is not None:
                runs = runs.filter(data_flow_id=self.flow_id)
            if self.flow_ids is not None:
                runs = runs.filter(data_flow_id__in=self.flow_ids)
            limit = app_settings.SSE_REPLAY_MAX_EVENTS
            ids = list(runs.order_by().values_list("pk", flat=True).distinct()[: limit + 1])
            if len(ids) > limit:  # away too long: the present state says more, and less
                return self._snapshot()
            states = load_run_ids(ids)
        chunks = self.receive(states, since=to_micros(since))
        if len(chunks) > app_settings.SSE_REPLAY_MAX_EVENTS or (
            sum(map(len, chunks)) > app_settings.SSE_REPLAY_MAX_BYTES
        ):
            return self._snapshot()
        return chunks

    def resync(self) -> list[bytes]:
        """A fresh snapshot, for a client whose queue overflowed (it missed changes)."""
        if self.run_id is not None:
            self._seen.clear()
        return self._snapshot()

    # -- changes -------------------------------------------------------------------------

    def receive(self, states: list[RunState], since: int | None = None) -> list[bytes]:
        """The events for these changed runs that this client has not had yet.

        A one-run stream also sends the run's new log lines (``log`` events) first: writing
        a batch of them stamps the run's ``updated_at``, which brings the run here.
        """
        chunks: list[bytes] = []
        if self.run_id is not None and states:
            chunks += self._log_events()
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

    def _log_events(self) -> list[bytes]:
        assert self.run_id is not None
        lines = DataFlowRunLog.objects.filter(
            run_id=self.run_id, position__gt=self.log_after
        ).order_by("position")[: app_settings.SSE_REPLAY_MAX_EVENTS]
        chunks = []
        for line in lines:
            payload = {
                "run": self.run_id,
                "position": line.position,
                "created_at": line.created_at,
                "level": line.level,
                "logger": line.logger,
                "message": line.message,
                "step": line.step,
            }
            chunks.append(format_event("log", payload, self.cursor))
            self.log_after = line.position
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


#: Put in a client's queue instead of the changes it overflowed with.
RESYNC: list[RunState] = []


class QueueCounters:
    """What the clients' queues of this process have done (read by tests and benchmarks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Queues that filled up and were replaced by one :data:`RESYNC`.
        self.resyncs = 0
        #: Batches not queued because a :data:`RESYNC` was already waiting (it covers them).
        self.dropped = 0

    def count(self, *, resyncs: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.resyncs += resyncs
            self.dropped += dropped


#: The clients' queues of this process.
queue_counters = QueueCounters()


class Inbox:
    """A client's queue of change batches, bounded by ``SSE_CLIENT_QUEUE``.

    A client that does not read (or reads slowly) does not make the server keep every
    batch for it: when its queue is full it is emptied and holds one :data:`RESYNC` (a
    fresh snapshot, loaded when the client reads again), and while that waits, further
    batches are not kept at all (the snapshot will have them). So what a client that never
    reads costs stops growing once its queue has filled.

    :meth:`put` and :meth:`get` may be called from different threads (WSGI: the source's
    listener and the worker thread); :class:`AsyncInbox` is the same on an event loop.
    """

    def __init__(self) -> None:
        self.limit = max(2, app_settings.SSE_CLIENT_QUEUE)
        self.queue: queue.Queue[list[RunState]] = queue.Queue()
        self.resync_waiting = False

    def put(self, batch: list[RunState]) -> None:
        with self.queue.mutex:  # only the source's listener puts
            if self.resync_waiting:
                queue_counters.count(dropped=1)
                return
            waiting = self.queue.queue
            if len(waiting) >= self.limit - 1:  # keep a place for the resync
                waiting.clear()
                batch = RESYNC
                self.resync_waiting = True
                queue_counters.count(resyncs=1)
        self.queue.put(batch)

    def get(self, timeout: float) -> list[RunState]:
        batch = self.queue.get(timeout=timeout)
        if batch is RESYNC:
            with self.queue.mutex:
                self.resync_waiting = False
        return batch


class AsyncInbox:
    """:class:`Inbox` on an event loop: :meth:`put` runs on the loop's thread."""

    def __init__(self) -> None:
        self.limit = max(2, app_settings.SSE_CLIENT_QUEUE)
        self.queue: asyncio.Queue[list[RunState]] = asyncio.Queue()
        self.resync_waiting = False

    def put(self, batch: list[RunState]) -> None:
        if self.resync_waiting:
            queue_counters.count(dropped=1)
            return
        if self.queue.qsize() >= self.limit - 1:
            while not self.queue.empty():
                self.queue.get_nowait()
            batch = RESYNC
            self.resync_waiting = True
            queue_counters.count(resyncs=1)
        self.queue.put_nowait(batch)

    async def get(self, timeout: float) -> list[RunState] | None:
        """The next batch, or ``None`` after ``timeout`` seconds.

        Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives
        as the awaited value does (a client leaving while changes flow). The ASGI handler
        cancels the stream when its client leaves, and a stream that missed that
        cancellation went on forever, writing keep-alives to nobody and holding its
        subscriber, the listener and a request task. ``asyncio.wait`` always lets the
        cancellation through.
        """
        getter = asyncio.ensure_future(self.queue.get())
        try:
            done, _pending = await asyncio.wait({getter}, timeout=timeout)
        finally:
            if not getter.done():
                getter.cancel()
        if getter not in done:
            return None
        batch = getter.result()
        if batch is RESYNC:
            self.resync_waiting = False
        return batch


def gated_opening(stream: Stream) -> list[bytes]:
    """The stream's first events, loaded in its turn at the database (see ``limits``)."""
    with database_turn():
        return stream.opening()


def gated_resync(stream: Stream) -> list[bytes]:
    with database_turn():
        return stream.resync()


def gated_receive(stream: Stream, batch: list[RunState]) -> list[bytes]:
    """A batch's events; a one-run stream reads the run's new log lines for them, in its
    turn at the database, and gives the connection back (a WSGI stream holds none while it
    waits)."""
    if stream.run_id is None or not batch:
        return stream.receive(batch)
    with database_turn():
        return stream.receive(batch)


async def async_events(source: EventSource, stream: Stream) -> AsyncIterator[bytes]:
    """The stream under ASGI: waits on an asyncio queue, holding no thread."""
    batches = AsyncInbox()
    loop = asyncio.get_running_loop()

    def deliver(batch: list[RunState]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the stream is gone
            loop.call_soon_threadsafe(batches.put, batch)

    subscriber = stream.subscriber(deliver)
    source.subscribe(subscriber)
    try:
        try:
            opening = await in_pool_thread(gated_opening, stream)
        except StreamsBusy:
            yield RECONNECT
            return
        await release_request_thread()
        for chunk in opening:
            yield chunk
        keepalive = app_settings.SSE_KEEPALIVE
        while not stream.finished:
            batch = await batches.get(keepalive)
            if batch is None:
                yield KEEPALIVE
                continue
            if batch is RESYNC:
                try:
                    chunks = await in_pool_thread(gated_resync, stream)
                except StreamsBusy:
                    yield RECONNECT
                    return
            else:
                # Reads the run's new log lines: database work, off the event loop.
                try:
                    chunks = await in_pool_thread(gated_receive, stream, batch)
                except StreamsBusy:
                    yield RECONNECT
                    return
            for chunk in chunks:
                yield chunk
    finally:
        source.unsubscribe(subscriber)


def sync_events(
    source: EventSource,
    stream: Stream,
    *,
    slot: StreamSlot | None = None,
    max_seconds: float | None = None,
) -> Iterator[bytes]:
    """The stream under WSGI: the worker thread waits on a queue between events.

    It holds that thread, so it ends after ``max_seconds`` with a ``retry:`` hint (the
    browser reconnects with ``Last-Event-ID`` and misses nothing), and gives its database
    connection back after the snapshot. ``slot`` is released when it ends.
    """
    batches = Inbox()
    subscriber = stream.subscriber(batches.put)
    source.subscribe(subscriber)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    try:
        try:
            yield from gated_opening(stream)
        except StreamsBusy:
            yield RECONNECT
            return
        keepalive = app_settings.SSE_KEEPALIVE
        while not stream.finished:
            wait = keepalive
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    yield RECONNECT
                    return
                wait = min(wait, left)
            try:
                batch = batches.get(timeout=wait)
            except queue.Empty:
                if deadline is None or time.monotonic() < deadline:
                    yield KEEPALIVE
                continue
            if batch is RESYNC:
                try:
                    yield from gated_resync(stream)
                except StreamsBusy:
                    yield RECONNECT
                    return
            else:
                try:
                    yield from gated_receive(stream, batch)
                except StreamsBusy:
                    yield RECONNECT
                    return
    finally:
        source.unsubscribe(subscriber)
        if slot is not None:
            slot.release()


def _last_log_position(run_id: int, before: datetime | None = None) -> int:
    """The position of the run's last log line (written before ``before``), 0 if none."""
    lines = DataFlowRunLog.objects.filter(run_id=run_id)
    if before is not None:
        lines = lines.filter(created_at__lt=before)
    last: int | None = lines.aggregate(last=Max("position"))["last"]
    return last or 0
