"""Live status by database polling: any database, no extra service (the default).

One poller thread per process serves every open stream: each ``SSE_POLL_INTERVAL`` it
runs one query (runs and steps whose indexed ``updated_at`` is at or after the cursor,
less :data:`~django_dataflows.live.base.LOOKBACK`), whatever the number of clients. Rows
it has already seen, with the same ``updated_at`` and status, are skipped; the rest are
loaded once and handed to every stream that wants them.
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
        seen: dict[tuple[int, int], tuple[datetime, str]] = {}
        cursor = database_now()
        while not self.stopping.is_set():
            since = cursor - LOOKBACK
            changed: set[int] = set()
            for kind, pk, run_id, updated_at, status in changed_rows(since):
                if seen.get((kind, pk)) != (updated_at, status):
                    seen[(kind, pk)] = (updated_at, status)
                    changed.add(run_id)
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
