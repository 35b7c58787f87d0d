"""Scenarios of live status against a real server process, shared by the tests
(``test_live_memory``, ``test_live_cleanup``, ``test_live_starvation``) and
``bench/live_memory.py``.

**Memory** (:func:`scenario`): runs with 1 MB inputs (stored before the input limit
existed, or by other code) keep changing; some clients replay ``events/`` from
``Last-Event-ID: 1`` and read on, others connect and never read. Before the limits, five
of each took a uvicorn process from 179 MB to 1.37 GB. The server's resident memory
(``VmRSS``) is sampled throughout.

**Cleanup** (:func:`cycles`): clients connect, read and leave, many times, while a run
changes; then every stream must end (see ``tests.live_probe``).

**Restart** (:func:`restart_burst`): clients watch a run, the server restarts, and they
all reconnect at once with ``Last-Event-ID``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

from django_dataflows.models import DataFlowRun, RunStatus
from tests.async_workers import PATIENCE, WorkerProcess, wait_for
from tests.factories import DataFlowRunFactory
from tests.sse import PeakConnections, SSEClient, server_state

REDIS_URL = "redis://127.0.0.1:6379/7"
REDIS = "django_dataflows.live.redis.RedisEvents"

#: One run's input: 1 MB of JSON.
BIG_INPUT = {"rows": "x" * 1_000_000}
#: One run's result, just within what an event carries whole (SUMMARY_FIELD_BYTES): the
#: largest events, which fill a never-reading client's buffers soonest.
FULL_RESULT = {"rows": "y" * 4000}


def rss_bytes(pid: int) -> int:
    """The process's resident memory now (``VmRSS`` in ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"No VmRSS for {pid}")


class RSSSampler(threading.Thread):
    """Samples a process's resident memory until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_bytes(pid)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return self.peak


def big_runs(count: int) -> list[int]:
    """``count`` active runs with a 1 MB input each (written past the API's limit) and a
    result that events carry whole."""
    ids = [DataFlowRunFactory(status=RunStatus.IN_PROGRESS).pk for _ in range(count)]
    DataFlowRun.objects.filter(pk__in=ids).update(input=BIG_INPUT, result=FULL_RESULT)
    return ids


class Changing(threading.Thread):
    """Changes every one of the runs (one statement), again and again, until stopped."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.ids = ids
        self.stopping = threading.Event()
        self.changes = 0

    def run(self) -> None:
        try:
            while not self.stopping.is_set() and self.changes < 100_000:
                self.changes += 1
                runs = DataFlowRun.objects.filter(pk__in=self.ids)
                runs.update(progress={"done": self.changes})
                self.stopping.wait(0.05)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class NeverReading:
    """A client that asks for ``events/`` and then reads nothing at all (a small receive
    buffer, so that the server's writes back up quickly)."""

    def __init__(self, port: int, path: str, cookie: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
        self.sock.sendall(request.encode())

    def close(self) -> None:
        self.sock.close()


@dataclass(eq=False)
class Replaying(threading.Thread):
    """A client that replays from ``Last-Event-ID: 1`` and reads every event after."""

    port: int
    path: str
    cookie: str
    events: list[str] = field(default_factory=list)
    received: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        try:
            stream = SSEClient(self.port, self.path, cookie=self.cookie, last_event_id="1")
            try:
                assert stream.status == 200, stream.status
                while not self.stopping.is_set():
                    event = stream.next_event(timeout=PATIENCE)
                    if event is None:
                        break
                    self.events.append(event.event)
                    self.received += 1
            finally:
                stream.close()
        except BaseException as exc:  # the test reads it
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(PATIENCE)


@dataclass
class Outcome:
    before: int
    peak: int
    after: int
    resyncs: int
    dropped: int
    replayed: list[int]
    first_events: list[str]
    errors: list[str]


def scenario(
    pid: int, port: int, cookie: str, ids: list[int], *, replaying: int = 5, stalled: int = 5
) -> Outcome:
    """Run the scenario until every never-reading client's queue has overflowed and every
    replaying client has had changes after its replay; then let them go."""
    path = "/dataflows/api/events/"
    idle = server_state(port)
    before = rss_bytes(pid)
    sampler = RSSSampler(pid)
    sampler.start()
    writer = Changing(ids)
    writer.start()
    silent = [NeverReading(port, path, cookie) for _ in range(stalled)]
    readers = [Replaying(port, path, cookie) for _ in range(replaying)]
    for reader in readers:
        reader.start()
    try:

        def overflowed() -> dict[str, Any] | None:
            state = server_state(port)
            return state if state["resyncs"] - idle["resyncs"] >= stalled else None

        wait_for(overflowed, timeout=4 * PATIENCE, interval=0.2, what="the queues to fill")
        # And the never-reading clients keep being offered changes, which are dropped.
        dropped = idle["dropped"] + stalled * 5
        wait_for(lambda: server_state(port)["dropped"] >= dropped, what="changes dropped")
        wait_for(
            lambda: all(reader.received >= 5 or reader.error for reader in readers),
            what="the replaying clients to read changes",
        )
    finally:
        for client in silent:
            client.close()
        for reader in readers:
            reader.stop()
        writer.stop()
    peak = sampler.stop()
    state = server_state(port)

    def settled() -> bool:
        now = server_state(port)
        return now["subscribers"] == 0 and not now["listening"]

    wait_for(settled, what="every stream to end")
    return Outcome(
        before=before,
        peak=peak,
        after=rss_bytes(pid),
        resyncs=state["resyncs"] - idle["resyncs"],
        dropped=state["dropped"] - idle["dropped"],
        replayed=[reader.received for reader in readers],
        first_events=[reader.events[0] if reader.events else "" for reader in readers],
        errors=[repr(reader.error) for reader in readers if reader.error],
    )


def _change_one(run_id: int, source: str, stop: threading.Event) -> None:
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
            DataFlowRun.objects.filter(pk=run_id).update(progress={"done": done})
            if publish is not None:
                publish("dataflows:runs", str(run_id))
            stop.wait(0.005)
    finally:
        connection.close()
        if publish is not None:
            client.close()


def cycles(port: int, cookie: str, source: str, count: int, clients: int = 8) -> list[str]:
    """``count`` connect/read/leave cycles, ``clients`` at a time, on the run's stream and
    on ``events/`` by turns, while a run changes; the first event (or the second, every
    third time) each client read before it left."""
    run_id = DataFlowRunFactory(status=RunStatus.IN_PROGRESS).pk
    paths = [f"/dataflows/api/runs/{run_id}/events/", "/dataflows/api/events/"]

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
    writer = threading.Thread(target=_change_one, args=(run_id, source, stop))
    writer.start()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            return list(pool.map(cycle, range(count)))
    finally:
        stop.set()
        writer.join()


def idle_state(port: int) -> dict[str, Any]:
    """The server's live state without its counters (which only grow)."""
    return {**server_state(port), "resyncs": 0, "dropped": 0}


@dataclass
class Reconnected:
    outcomes: list[tuple[int, str, Any]]
    peak_connections: int | None


def restart_burst(process: WorkerProcess, port: int, cookie: str, clients: int) -> Reconnected:
    """``clients`` watch a run; the server restarts and the run changes meanwhile; they
    all reconnect at once with ``Last-Event-ID``. Each outcome is (status, first event's
    name or the error body, its data); on PostgreSQL the server's peak connections."""
    run_id = DataFlowRunFactory(status=RunStatus.IN_PROGRESS).pk
    path = f"/dataflows/api/runs/{run_id}/events/"
    watching = [SSEClient(port, path, cookie=cookie, timeout=120) for _ in range(clients)]
    seen = [stream.next_event(timeout=120).id for stream in watching]  # type: ignore[union-attr]
    process.stop()
    for stream in watching:  # the server went away: the streams ended
        assert stream.next_event(timeout=120) is None
        stream.close()
    DataFlowRun.objects.filter(pk=run_id).update(progress={"done": 1})  # while it was down
    process.start()
    together = threading.Barrier(clients)

    def reconnect(last_event_id: str) -> tuple[int, str, Any]:
        together.wait()
        try:
            stream = SSEClient(port, path, cookie=cookie, last_event_id=last_event_id, timeout=120)
        except OSError as exc:
            return 0, f"connect failed: {type(exc).__name__}", None
        try:
            if stream.status != 200:
                return stream.status, stream.body().decode(), None
            event = stream.next_event(timeout=120)
            return 200, event.event if event else "closed", event.data if event else None
        finally:
            stream.close()

    postgres = connection.vendor == "postgresql"
    connection.close()  # only the server's connections are counted
    watcher: PeakConnections | nullcontext[None] = PeakConnections() if postgres else nullcontext()
    with watcher, ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(reconnect, seen))
    peak = watcher.peak if isinstance(watcher, PeakConnections) else None
    return Reconnected(outcomes, peak)


def wait_until_idle(port: int, idle: dict[str, Any]) -> Callable[[], bool]:
    """A probe for ``wait_for``: the server's live state is ``idle`` again."""
    return lambda: idle_state(port) == idle
