"""One clock for scheduling: the database's.

App servers' clocks disagree (a server ten minutes fast would run flows ten minutes early);
the database is the one thing they all share. The heartbeat reads the database's ``now()``
once and judges due-ness, slot arithmetic and the reaper's deadlines by it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection
from django.utils import timezone

#: The current time, as each database server tells it.
_NOW_SQL = {
    "postgresql": "SELECT statement_timestamp()",
    "mysql": "SELECT UTC_TIMESTAMP(6)",
}


def database_now() -> datetime:
    """The database server's current time (an aware UTC datetime): one query.

    SQLite is a library inside this process: its clock is this process's, read without a
    query (and to the microsecond, where SQLite's own ``now`` stops at the millisecond).
    On a database this module does not know, the app server's clock is used too.
    """
    sql = _NOW_SQL.get(connection.vendor)
    if sql is None:
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(sql)
        value: datetime | str = cursor.fetchone()[0]
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
