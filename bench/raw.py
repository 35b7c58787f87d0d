"""The hand-written raw-SQL claim both benchmarks compare the heartbeat's claim with.

It does the same work as ``claim_due_flows`` (lock the due flows, skip the busy ones,
insert their runs with task ids, advance their schedules) in the fewest statements we
could write by hand. Import it after Django is set up.
"""

from __future__ import annotations

from django.db import connection, transaction

FLOWS = "dataflows_dataflow"
RUNS = "dataflows_dataflowrun"

RAW_SELECT = f"""
    SELECT id, next_run_at, run_interval, queue, cron, timezone FROM {FLOWS}
    WHERE enabled AND next_run_at <= %s ORDER BY next_run_at, id LIMIT %s
    FOR UPDATE SKIP LOCKED"""
RAW_BUSY = f"""
    SELECT data_flow_id FROM {RUNS}
    WHERE data_flow_id = ANY(%s) AND status IN ('pending', 'in_progress', 'paused')"""
RAW_INSERT = f"""
    INSERT INTO {RUNS} (data_flow_id, status, trigger, scheduled_for, created_at, activated_at,
                        error_message, error_backtrace, attempt, task_id, queue, input, progress,
                        redeliveries)
    SELECT f, 'pending', 'schedule', s, %s, %s, '', '', 1,
           replace(gen_random_uuid()::text, '-', ''), q, '{{}}', '{{}}', 0
    FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[]) AS t(f, s, q)
    RETURNING id, task_id, queue"""
RAW_UPDATE = f"""
    UPDATE {FLOWS} AS flow SET next_run_at = v.n, last_run_at = %s, last_run_status = 'pending'
    FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, n) WHERE flow.id = v.id"""


def raw_claim(batch: int) -> list[tuple[int, str, str]]:
    """Claim up to ``batch`` due flows; return (run id, task id, queue) of each run inserted."""
    from django.utils import timezone

    from django_dataflows.schedules import next_cron_slot, next_slot_after

    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RAW_SELECT, [now, batch])
        due = cursor.fetchall()
        if not due:
            return []
        cursor.execute(RAW_BUSY, [[row[0] for row in due]])
        busy = {row[0] for row in cursor.fetchall()}
        claim = [row for row in due if row[0] not in busy]
        ids = [row[0] for row in claim]
        slots = [row[1] for row in claim]
        queues = [row[3] or "default" for row in claim]
        cursor.execute(RAW_INSERT, [now, now, ids, slots, queues])
        inserted = cursor.fetchall()
        nexts = [
            next_cron_slot(row[4], row[5], max(row[1], now))
            if row[4]
            else next_slot_after(row[1], row[2], now)
            for row in claim
        ]
        cursor.execute(RAW_UPDATE, [now, ids, nexts])
    return inserted
