"""Live status by database polling: any database, no extra service (the default).

One poller thread per process serves every open stream: each ``SSE_POLL_INTERVAL`` it
runs one query (the runs whose indexed ``updated_at`` is at or after the cursor, less
:data:`~django_dataflows.live.base.LOOKBACK`; a step's write stamps its run), whatever the
number of clients. Runs it has already seen with the same ``updated_at`` and status are
skipped; the rest are loaded once, with their steps, and handed to every stream that wants
them.
"""

from __future__ import annotations

from datetime import datetime

from django_dataflows.conf import app_settings
from django_dataflows.live.base import (
    LOOKBACK,
    EventSource,
    Listener,
    ThreadListener,
    changed_rows,
    database_now,
    load_run_ids,
)


class Poller(ThreadListener):
    name = "poller"

    def listen(self) -> None:
        seen: dict[int, tuple[datetime, str]] = {}
        cursor = database_now()
        while not self.stopping.is_set():
            since = cursor - LOOKBACK
            changed: set[int] = set()
            for pk, updated_at, status in changed_rows(since):
                if seen.get(pk) != (updated_at, status):
                    seen[pk] = (updated_at, status)
                    changed.add(pk)
                cursor = max(cursor, updated_at)
            # What falls out of the window is never read again.
            horizon = cursor - LOOKBACK
            seen = {key: value for key, value in seen.items() if value[0] >= horizon}
            if changed:
                self.source.deliver(load_run_ids(changed))
            self.stopping.wait(app_settings.SSE_POLL_INTERVAL)


class PollingEvents(EventSource):
    """Database polling: one shared poller per process, one query per interval."""

    def start_listener(self) -> Listener:
        return Poller(self)
