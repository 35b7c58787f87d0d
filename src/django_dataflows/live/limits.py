"""What keeps live streams from starving the site they are served by.

- Under WSGI a stream holds a worker thread for as long as it is open. A process serves at
  most ``SSE_WSGI_MAX_STREAMS`` at once (:data:`wsgi_stream_slots`; beyond it the view
  answers 503 with ``Retry-After``), each for at most ``SSE_WSGI_MAX_SECONDS``, after which
  it ends with a ``retry:`` hint and the browser reconnects with ``Last-Event-ID``.
- A burst of clients (every browser reconnecting after a deploy) must not open a database
  connection each: the database work of opening a stream (authentication, the checks, the
  snapshot) runs under :func:`database_turn`, at most ``SSE_DB_CONNECTIONS`` at a time per
  process, and gives its connection back when done, so a stream holds none while it waits
  for changes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

from django_dataflows.conf import app_settings

#: Seconds a client should wait before trying again after a 503 (sent as ``Retry-After``).
RETRY_AFTER = 5
#: The ``retry:`` hint (milliseconds) a stream sends before it ends on purpose.
RECONNECT_MS = 1000


class StreamsBusy(Exception):
    """No stream slot, or no turn at the database, within the wait: answer 503."""


class StreamSlot:
    """One held stream slot; :meth:`release` is safe to call more than once."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots = slots
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._slots._give_back()


class StreamSlots:
    """A counter of the streams open in this process, bounded by a setting read live."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def take(self) -> StreamSlot | None:
        with self._lock:
            if self.open >= app_settings.SSE_WSGI_MAX_STREAMS:
                return None
            self.open += 1
        return StreamSlot(self)

    def _give_back(self) -> None:
        with self._lock:
            self.open -= 1


#: The WSGI streams of this process.
wsgi_stream_slots = StreamSlots()


class _Turns:
    """A semaphore sized by ``SSE_DB_CONNECTIONS`` (re-made if the setting changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._size = 0
        self._semaphore = threading.BoundedSemaphore(1)

    def semaphore(self) -> threading.BoundedSemaphore:
        size = app_settings.SSE_DB_CONNECTIONS
        with self._lock:
            if size != self._size:
                self._size, self._semaphore = size, threading.BoundedSemaphore(size)
            return self._semaphore


_turns = _Turns()


@contextmanager
def database_turn() -> Iterator[None]:
    """Do a stream's database work as one of at most ``SSE_DB_CONNECTIONS`` per process,
    then give the connection back. Raise :class:`StreamsBusy` after
    ``SSE_DB_WAIT`` seconds without a turn."""
    semaphore = _turns.semaphore()
    if not semaphore.acquire(timeout=app_settings.SSE_DB_WAIT):
        raise StreamsBusy("Too many live streams are opening at once; try again shortly.")
    try:
        yield
    finally:
        try:
            give_back_connections()
        finally:
            semaphore.release()


def give_back_connections() -> None:
    """Close this thread's database connections, unless a transaction holds one (a test's,
    or a project's ``ATOMIC_REQUESTS``): a stream waits for changes without one."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
