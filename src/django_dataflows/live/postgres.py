"""Live status by PostgreSQL ``LISTEN/NOTIFY`` (psycopg 3): real time, no extra service.

Writers ``NOTIFY`` the ids of the runs they changed once their transaction has committed
(through the ``runs_changed`` signal); one listening connection per process, opened with
the first stream and closed with the last, loads each notified run once and hands it to
every stream that wants it. PostgreSQL delivers notifications in commit order.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import connection

from django_dataflows.live.base import (
    EventSource,
    Listener,
    ThreadListener,
    database_now,
    load_run_ids,
)

CHANNEL = "dataflows_runs"
#: NOTIFY payloads must stay under 8,000 bytes; ids are sent in chunks well below that.
IDS_PER_NOTIFY = 500


def split_ids(payload: str) -> set[int]:
    return {int(part) for part in payload.split(",") if part.isdigit()}


class NotifyListener(ThreadListener):
    name = "listen"

    def listen(self) -> None:
        import psycopg

        started = database_now()
        settings = connection.settings_dict
        self.conn: Any = psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"] or None,
            password=settings["PASSWORD"] or None,
            host=settings["HOST"] or None,
            port=settings["PORT"] or None,
            autocommit=True,
        )
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.catch_up(started)
        while not self.stopping.is_set():
            run_ids: set[int] = set()
            for notify in self.conn.notifies(timeout=0.5, stop_after=1):
                run_ids |= split_ids(notify.payload)
            if run_ids:
                self.source.deliver(load_run_ids(run_ids))

    def cleanup(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()


class PostgresEvents(EventSource):
    """PostgreSQL ``LISTEN/NOTIFY``: changes arrive as their transactions commit."""

    publishes = True

    def start_listener(self) -> Listener:
        return NotifyListener(self)

    def publish(self, run_ids: list[int]) -> None:
        with connection.cursor() as cursor:
            for start in range(0, len(run_ids), IDS_PER_NOTIFY):
                chunk = ",".join(str(pk) for pk in run_ids[start : start + IDS_PER_NOTIFY])
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, chunk])

    @classmethod
    def check(cls) -> list[CheckMessage]:
        if connection.vendor != "postgresql":
            return [
                Error(
                    "DATAFLOWS['EVENTS'] is PostgresEvents but the default database is "
                    f"{connection.vendor}, not PostgreSQL.",
                    hint="Use django_dataflows.live.polling.PollingEvents (any database) "
                    "or django_dataflows.live.redis.RedisEvents.",
                    id="dataflows.E052",
                )
            ]
        return []
