"""Real servers and a Server-Sent Events client that reads the stream over a socket.

The live status tests and ``bench/live.py`` start uvicorn (ASGI), gunicorn with threads
(WSGI) or ``runserver`` as subprocesses on the test database, and read the stream the way
a browser's ``EventSource`` does: one HTTP request, then events as they come.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection

from tests.async_workers import PATIENCE, WorkerProcess

SERVERS = ("uvicorn", "gunicorn", "runserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_database_url() -> str:
    """A ``DATABASE_URL`` naming the database this process uses (the test database)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{db['USER']}{password}@{host}/{db['NAME']}"


#: gunicorn's options for each kind of gunicorn server the tests and benchmarks start.
GUNICORN_KINDS = {
    "gunicorn": ["--worker-class", "gthread", "--threads", "8", "--workers", "1"],
    "gunicorn-sync-3": ["--worker-class", "sync", "--workers", "3"],
    "gunicorn-gthread-1": ["--worker-class", "gthread", "--threads", "1", "--workers", "1"],
    "gunicorn-gthread-8": ["--worker-class", "gthread", "--threads", "8", "--workers", "1"],
    "gunicorn-gthread-32": ["--worker-class", "gthread", "--threads", "32", "--workers", "1"],
}


def server_process(kind: str, log_path: Path, **env: str) -> tuple[WorkerProcess, int]:
    """A real server of ``tests.urls`` (not started) and its port.

    The streams' own limits are lifted (``SSE_WSGI_MAX_STREAMS``) unless ``env`` sets
    ``DATAFLOWS_TEST_SETTINGS``: the tests of those limits set them.
    """
    port = free_port()
    address = f"127.0.0.1:{port}"
    if kind == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "tests.asgi:application", "--port", str(port)]
        argv += ["--log-level", "info", "--no-access-log", "--lifespan", "off"]
        marker = "Uvicorn running on"
    elif kind in GUNICORN_KINDS:
        argv = [sys.executable, "-m", "gunicorn", "tests.wsgi:application", "-b", address]
        # A stop waits at most 5 s for held streams (gunicorn's default is 30 s).
        argv += [*GUNICORN_KINDS[kind], "--timeout", "120", "--graceful-timeout", "5"]
        marker = "Booting worker"
    else:
        argv = [sys.executable, "-m", "django", "runserver", address, "--noreload"]
        marker = "Quit the server with"
    environment = {
        "DATABASE_URL": server_database_url(),
        "PYTHONUNBUFFERED": "1",
        "DATAFLOWS_TEST_SSE_KEEPALIVE": "1",
        "DATAFLOWS_TEST_SSE_POLL_INTERVAL": "0.1",
        "DATAFLOWS_TEST_SETTINGS": json.dumps({"SSE_WSGI_MAX_STREAMS": 64}),
        **env,
    }
    return WorkerProcess(kind, argv, log_path=log_path, ready_marker=marker, env=environment), port


@dataclass
class Event:
    event: str
    id: str
    data: Any


class SSEClient:
    """One ``GET`` of an event stream, read line by line from a socket."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        cookie: str = "",
        last_event_id: str = "",
        timeout: float = PATIENCE,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        headers = [f"GET {path} HTTP/1.0", "Host: 127.0.0.1", "Accept: text/event-stream"]
        if cookie:
            headers.append(f"Cookie: {cookie}")
        if last_event_id:
            headers.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.comments: list[str] = []
        self.retry: int | None = None
        self.closed = False

    def body(self) -> bytes:
        return self.file.read()

    def next_event(self, timeout: float = PATIENCE) -> Event | None:
        """The next event (comments are kept in ``comments``); ``None`` at the end."""
        fields: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"No event within {timeout} s")
            raw = self.file.readline()
            if not raw:
                self.closed = True
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if fields:
                    return Event(
                        fields.get("event", "message"),
                        fields.get("id", ""),
                        json.loads(fields.get("data", "null")),
                    )
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            if name == "retry":  # the reconnection delay, not part of an event
                self.retry = int(value)
                continue
            fields[name] = value.removeprefix(" ")

    def events_until(self, predicate: Any, timeout: float = PATIENCE) -> list[Event]:
        """Events up to and including the first one ``predicate`` accepts."""
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        while time.monotonic() < deadline:
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event is None:
                break
            events.append(event)
            if predicate(event):
                return events
        raise AssertionError(f"No matching event; got {events}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def thread_count(pid: int) -> int:
    """How many threads the process has (Linux)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def serving_pid(pid: int) -> int:
    """The process that serves requests: gunicorn's worker, else the server itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def settled_thread_count(pid: int, quiet: float = 2.0, timeout: float = PATIENCE) -> int:
    """The process's thread count once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    count, since = thread_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = thread_count(pid)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
    raise TimeoutError(f"The thread count of {pid} kept changing.")


def server_state(port: int) -> dict[str, Any]:
    """What the server process holds for live status now (see ``tests.live_probe``)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
    try:
        conn.request("GET", "/test/live-state/")
        response = conn.getresponse()
        assert response.status == 200, response.read()
        state: dict[str, Any] = json.loads(response.read())
        return state
    finally:
        conn.close()


def remote_connections(pid: int, port: int) -> int:
    """How many established TCP connections the process (its threads included) has open to
    ``port`` (Redis 6379, PostgreSQL 5432): read from ``/proc``, as ``ss -p`` would."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


class PeakConnections:
    """Samples how many connections other sessions hold to the test database (PostgreSQL)
    while open; ``peak`` is the most seen. Use as a context manager."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with connection.temporary_connection() as cursor:
            while not self._done.is_set():
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
                self.peak = max(self.peak, int(cursor.fetchone()[0]))
                self._done.wait(0.02)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
