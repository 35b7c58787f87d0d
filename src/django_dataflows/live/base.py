"""Event sources: where live status events come from, and how they reach the streams.

A source keeps, per process, the set of streams that are open (:class:`Subscriber`) and
one *listener* that learns which runs changed: a poller thread, a ``LISTEN`` connection or
a Redis subscription. The listener starts with the first subscriber and stops with the
last, so a process with no open stream holds no thread, connection or subscription. The
listener loads each changed run (and its steps) once and hands the same snapshot to every
subscriber that wants it: the database work does not grow with the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, connections
from django.db.models import Case, F, Func, IntegerField, JSONField, Prefetch, Value, When
from django.db.models.lookups import GreaterThan

from django_dataflows.conf import app_settings
from django_dataflows.live.payloads import run_payload, step_payload
from django_dataflows.models import DataFlowRun, DataFlowRunStep
from django_dataflows.validators import cap_large_fields, capped_json

logger = logging.getLogger("django_dataflows.live")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

#: How far back a poll or a replay reads before its cursor. ``updated_at`` is the time a
#: statement ran, but rows become visible when their transaction commits, which may be
#: later and in another order; reading a little back (and de-duplicating) catches them.
LOOKBACK = timedelta(seconds=5)


def to_micros(moment: datetime) -> int:
    """An event id: microseconds since the epoch of a database timestamp."""
    return (moment - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + micros * MICROSECOND


def fingerprint(payload: dict[str, Any]) -> str:
    # Two writes within one tick of a coarse database clock (SQLite keeps milliseconds)
    # share an updated_at; the content tells them apart.
    text = json.dumps(payload, sort_keys=True, cls=DjangoJSONEncoder)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class StepState:
    """One step as loaded from the database."""

    step_id: int
    updated: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class RunState:
    """One run and its steps as loaded from the database, with the backtrace."""

    run_id: int
    flow_id: int
    status: str
    finished: bool
    updated: int
    payload: dict[str, Any]
    steps: tuple[StepState, ...] = field(default=())

    def payload_for(self, *, backtrace: bool) -> dict[str, Any]:
        if backtrace:
            return self.payload
        return {key: value for key, value in self.payload.items() if key != "error_backtrace"}

    @property
    def latest(self) -> int:
        """The newest ``updated_at`` of the run and its steps."""
        return max([self.updated, *(step.updated for step in self.steps)])


class JSONBytes(Func):
    """The size in bytes of a JSON column's stored text, computed by the database."""

    output_field = IntegerField()
    template = "LENGTH(CAST(%(expressions)s AS CHAR))"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="OCTET_LENGTH((%(expressions)s)::text)")

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))")


def _bounded(queryset: Any, *fields: str) -> Any:
    """``queryset`` reading each JSON field only where it is small: a large one stays in
    the database, and only its size is read (``<field>_bytes``); see :func:`_small`."""
    limit = app_settings.SUMMARY_FIELD_BYTES
    annotations: dict[str, Any] = {}
    for name in fields:
        size = JSONBytes(name)
        annotations[f"{name}_bytes"] = size
        annotations[f"{name}_small"] = Case(
            When(GreaterThan(size, limit), then=Value(None)),
            default=F(name),
            output_field=JSONField(),
        )
    return queryset.defer(*fields).annotate(**annotations)


def _small(row: Any, *fields: str) -> None:
    """Set each field of a row read through :func:`_bounded`: its value, or the stand-in
    ``{"truncated": true, "bytes": n}`` that :func:`capped_json` gives a large value."""
    limit = app_settings.SUMMARY_FIELD_BYTES
    for name in fields:
        size = getattr(row, f"{name}_bytes")
        small = getattr(row, f"{name}_small")
        if size is not None and size > limit:
            setattr(row, name, {"truncated": True, "bytes": size})
        else:
            setattr(row, name, small)


def load_runs(runs: Iterable[DataFlowRun]) -> list[RunState]:
    """Snapshot these runs and their steps (read through ``runs_queryset()``: it leaves
    large inputs and results in the database and prefetches the steps)."""
    states = []
    for run in runs:
        if hasattr(run, "input_bytes"):
            _small(run, "input", "result")
        steps = list(run.steps.all())
        for step in steps:
            if hasattr(step, "result_bytes"):
                _small(step, "result")
        states.append(
            RunState(
                run_id=run.pk,
                flow_id=run.data_flow_id,
                status=run.status,
                finished=not run.is_active,
                updated=to_micros(run.updated_at),
                # Events carry bounded payloads: large input and results are capped.
                payload=cap_large_fields(run_payload(run, backtrace=True)),
                steps=tuple(
                    StepState(step.pk, to_micros(step.updated_at), _capped_step(step))
                    for step in steps
                ),
            )
        )
    return states


def _capped_step(step: DataFlowRunStep) -> dict[str, Any]:
    payload = step_payload(step)
    payload["result"] = capped_json(payload.get("result"), app_settings.SUMMARY_FIELD_BYTES)
    return payload


def runs_queryset() -> Any:
    """Runs as streams show them: not soft-deleted, with their flow and steps.

    Events carry bounded payloads, and loading them is bounded too: an input or result
    larger than ``SUMMARY_FIELD_BYTES`` is not read from the database at all (only its
    size), nor is the flow's configuration. Before, each change of 40 runs with 1 MB
    inputs read 40 MB to send a few kilobytes, and a few such loads at once (the poller,
    the openings of several streams) took a server's memory past a gigabyte.
    """
    steps = Prefetch(
        "steps", queryset=_bounded(DataFlowRunStep.objects.order_by("position"), "result")
    )
    runs = DataFlowRun.objects.not_deleted().select_related("data_flow")
    runs = _bounded(runs, "input", "result").defer("data_flow__configuration")
    return runs.prefetch_related(steps)


def load_run_ids(run_ids: Iterable[int]) -> list[RunState]:
    """Snapshot the runs with these ids (soft-deleted runs are left out)."""
    ids = sorted(set(run_ids))
    if not ids:
        return []
    return load_runs(runs_queryset().filter(pk__in=ids).order_by("pk"))


def database_now() -> datetime:
    """The database's clock, which stamps ``updated_at`` (app servers' clocks may differ)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        row = cursor.fetchone()
    raw: Any = row[0] if row else None
    if isinstance(raw, str):  # SQLite answers text, in UTC
        raw = datetime.fromisoformat(raw)
    moment: datetime = raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    return moment


def changed_rows(since: datetime) -> list[tuple[int, datetime, str]]:
    """``(pk, updated_at, status)`` of the runs changed since ``since``: one index range scan.

    A write to a step stamps its run's ``updated_at`` too (a database trigger, migration
    ``0003_runcontrol``), so changed steps are found through their runs.
    """
    rows = DataFlowRun.objects.filter(updated_at__gte=since).values_list(
        "pk", "updated_at", "status"
    )
    return list(rows.order_by())


def load_changed_since(since: datetime) -> list[RunState]:
    """Snapshot the runs that changed (themselves or a step) since ``since``."""
    return load_run_ids(pk for pk, _at, _status in changed_rows(since))


def run_and_close(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` on a pool thread, then close that thread's database connections
    (a pool thread may not run Django code again for a long time)."""
    try:
        return function(*args)
    finally:
        connections.close_all()


async def in_pool_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run sync (database) code from async code on the event loop's thread pool, not on a
    request's own thread."""
    return await sync_to_async(run_and_close, thread_sensitive=False)(function, *args)


Deliver = Callable[[list[RunState]], None]


class Subscriber:
    """One open stream: which runs it wants and how a batch of changes reaches it."""

    def __init__(
        self,
        deliver: Deliver,
        *,
        run_id: int | None = None,
        flow_id: int | None = None,
        flow_ids: frozenset[int] | None = None,
    ):
        self.deliver = deliver
        self.run_id = run_id
        self.flow_id = flow_id
        self.flow_ids = flow_ids

    def wants(self, state: RunState) -> bool:
        if self.run_id is not None:
            return state.run_id == self.run_id
        if self.flow_ids is not None and state.flow_id not in self.flow_ids:
            return False
        return self.flow_id is None or state.flow_id == self.flow_id


def threadsafe_queue_deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Deliver:
    """Hand batches to an asyncio queue from any thread (the listener's)."""

    def deliver(batch: list[RunState]) -> None:
        # A closed loop means the stream is gone.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, batch)

    return deliver


class Listener:
    """Learns which runs changed and hands them to :meth:`EventSource.deliver`."""

    def stop(self) -> None:
        raise NotImplementedError


class ThreadListener(Listener):
    """A listener running in one daemon thread per process (not per client)."""

    name = "listener"

    def __init__(self, source: EventSource):
        self.source = source
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._main, name=f"dataflows-live-{self.name}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        # Not joined: a stream's cleanup must never wait for a poll or a network call.
        self.stopping.set()

    def _main(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.listen()
                except Exception:
                    if self.stopping.is_set():  # e.g. the database went away at shutdown
                        break
                    logger.exception("Live status %s failed; retrying", self.name)
                    self._close()
                    self.stopping.wait(1.0)
        finally:
            with contextlib.suppress(Exception):
                self.cleanup()
            self._close()

    @staticmethod
    def _close() -> None:
        # A broken connection may fail to close too; the next query opens a new one.
        with contextlib.suppress(Exception):
            connection.close()

    def catch_up(self, since: datetime) -> None:
        """Deliver what changed since ``since``: writes published while this listener was
        not yet subscribed (starting, or reconnecting) are not lost."""
        self.source.deliver(load_changed_since(since - LOOKBACK))

    def listen(self) -> None:
        """Run until :attr:`stopping` is set; raise to be restarted after a pause."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what :meth:`listen` held."""


class EventSource:
    """Base class of the event sources named by ``DATAFLOWS["EVENTS"]``.

    Subclasses provide :meth:`start_listener`; sources whose listener is told about
    changes by the writers (rather than looking for them) set ``publishes`` and implement
    :meth:`publish`, which runs after the writing transaction commits.
    """

    #: Whether writers must call :meth:`publish` after committing a change.
    publishes = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._listener: Listener | None = None

    # -- subscribers -----------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.add(subscriber)
            if self._listener is None:
                self._listener = self.start_listener()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)
            listener = self._listener if not self._subscribers else None
            if listener is not None:
                self._listener = None
        if listener is not None:
            listener.stop()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def deliver(self, states: list[RunState]) -> None:
        """Give each subscriber the changed runs it wants (called by the listener)."""
        if not states:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            wanted = [state for state in states if subscriber.wants(state)]
            if wanted:
                subscriber.deliver(wanted)

    # -- for subclasses --------------------------------------------------------------

    def start_listener(self) -> Listener:
        raise NotImplementedError

    def publish(self, run_ids: list[int]) -> None:
        """Tell every process's listener that these runs changed (after commit)."""

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """System check messages about this source's configuration."""
        return []
