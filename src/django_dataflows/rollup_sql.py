"""The SQL that keeps run rollups: triggers on the run table, and the rebuild.

The triggers run in the statement that writes a run, so no code path (the ORM, the worker's
one-statement transitions, a bulk update) can forget them and no run costs an extra commit.
Only finished runs are rolled up: the heartbeat's insert of a pending run and the worker's
start fire no trigger body. A run moves its contribution when its status, duration, flow,
creation time or ``deleted_at`` change; a soft-deleted run has none. Deleting a run
(``dataflows_prune``) subtracts nothing: rollups keep statistics past retention.

Written for PostgreSQL and SQLite (other databases compute statistics from the runs). The
text is shared by migration ``0007_rollups`` and ``dataflows_rollups --rebuild``; changing
it needs a migration that recreates the triggers.
"""

# Every statement here is built from constants of this module; none takes user input.
# ruff: noqa: S608

from __future__ import annotations

from django_dataflows.histograms import bucket_sql

RUNS = "dataflows_dataflowrun"
ROLLUPS = "dataflows_runrollup"
BUCKETS = "dataflows_rundurationbucket"

FINISHED = ("success", "failed", "cancelled", "timed_out")
RATED = ("success", "failed", "timed_out")
#: Rollup count columns, one per finished status (same names).
COUNT_COLUMNS = FINISHED


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


def hour_sql(vendor: str, column: str) -> str:
    """The hour (UTC) ``column`` falls in, as the rollups store it."""
    if vendor == "postgresql":
        return f"date_trunc('hour', {column}, 'UTC')"
    return f"strftime('%Y-%m-%d %H:00:00', {column})"


def _hour_end_sql(vendor: str, column: str) -> str:
    if vendor == "postgresql":
        return f"({column} + INTERVAL '1 hour')"
    return f"datetime({column}, '+1 hour')"


def finished_sql(row: str) -> str:
    return f"{row}.status IN {_in(FINISHED)}"


def timed_sql(row: str) -> str:
    """A rated run with a duration: what durations and percentiles are over."""
    return f"{row}.status IN {_in(RATED)} AND {row}.duration_ms IS NOT NULL"


def _keep_lower(column: str) -> str:
    return (
        f"CASE WHEN excluded.{column} IS NULL THEN {ROLLUPS}.{column} "
        f"WHEN {ROLLUPS}.{column} IS NULL OR excluded.{column} < {ROLLUPS}.{column} "
        f"THEN excluded.{column} ELSE {ROLLUPS}.{column} END"
    )


def _keep_higher(column: str) -> str:
    return _keep_lower(column).replace(" < ", " > ")


def _apply(vendor: str, row: str, sign: int) -> list[str]:
    """Statements adding (``sign`` 1) or taking out (-1) the finished run ``row``."""
    hour = hour_sql(vendor, f"{row}.created_at")
    counted = f"{row}.deleted_at IS NULL AND {finished_sql(row)}"
    timed = f"{counted} AND {timed_sql(row)}"
    counts = ", ".join(
        f"CASE WHEN {row}.status = '{status}' THEN {sign} ELSE 0 END" for status in FINISHED
    )
    extreme = f"CASE WHEN {timed_sql(row)} AND {sign} > 0 THEN {row}.duration_ms END"
    statements = [
        f"INSERT INTO {ROLLUPS} (data_flow_id, hour, {', '.join(COUNT_COLUMNS)}, rated, "
        "duration_sum, duration_min, duration_max) "
        f"SELECT {row}.data_flow_id, {hour}, {counts}, "
        f"CASE WHEN {timed_sql(row)} THEN {sign} ELSE 0 END, "
        f"CASE WHEN {timed_sql(row)} THEN {sign} * {row}.duration_ms ELSE 0 END, "
        f"{extreme}, {extreme} WHERE {counted} "
        "ON CONFLICT (data_flow_id, hour) DO UPDATE SET "
        + ", ".join(
            f"{column} = {ROLLUPS}.{column} + excluded.{column}"
            for column in (*COUNT_COLUMNS, "rated", "duration_sum")
        )
        + f", duration_min = {_keep_lower('duration_min')}"
        + f", duration_max = {_keep_higher('duration_max')}",
        f"INSERT INTO {BUCKETS} (data_flow_id, hour, bucket, count) "
        f"SELECT {row}.data_flow_id, {hour}, {bucket_sql(f'{row}.duration_ms')}, {sign} "
        f"WHERE {timed} "
        "ON CONFLICT (data_flow_id, hour, bucket) DO UPDATE SET "
        f"count = {BUCKETS}.count + excluded.count",
    ]
    if sign < 0:
        # The hour's shortest or longest run left it: look again at the hour's runs (one
        # flow, one hour, on the flow's index). Runs pruned from that hour cannot be read
        # again, so a value nothing replaces is kept.
        def extreme_of(function: str, column: str) -> str:
            return (
                f"CASE WHEN rated <= 0 THEN NULL ELSE COALESCE((SELECT {function}(r.duration_ms) "
                f"FROM {RUNS} r WHERE r.data_flow_id = {ROLLUPS}.data_flow_id "
                f"AND r.created_at >= {ROLLUPS}.hour "
                f"AND r.created_at < {_hour_end_sql(vendor, f'{ROLLUPS}.hour')} "
                f"AND r.deleted_at IS NULL AND {timed_sql('r')}), {column}) END"
            )

        statements += [
            f"UPDATE {ROLLUPS} SET duration_min = {extreme_of('MIN', 'duration_min')}, "
            f"duration_max = {extreme_of('MAX', 'duration_max')} "
            f"WHERE data_flow_id = {row}.data_flow_id AND hour = {hour} AND {timed} "
            f"AND (duration_min >= {row}.duration_ms OR duration_max <= {row}.duration_ms)",
            f"DELETE FROM {BUCKETS} WHERE data_flow_id = {row}.data_flow_id "
            f"AND hour = {hour} AND count = 0 AND {timed}",
        ]
    return statements


#: The columns whose change moves a finished run's contribution.
WATCHED = ("status", "duration_ms", "deleted_at", "created_at", "data_flow_id")


def _changed(vendor: str) -> str:
    distinct = "IS DISTINCT FROM" if vendor == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{column} {distinct} NEW.{column}" for column in WATCHED)


def trigger_statements(vendor: str) -> tuple[list[str], list[str]]:
    """The statements creating, and those dropping, the rollup triggers on ``vendor``."""
    insert_when = f"NEW.deleted_at IS NULL AND {finished_sql('NEW')}"
    update_when = f"({finished_sql('OLD')} OR {finished_sql('NEW')}) AND ({_changed(vendor)})"
    if vendor == "postgresql":
        insert_body = ";\n".join(_apply(vendor, "NEW", 1))
        update_body = ";\n".join([*_apply(vendor, "OLD", -1), *_apply(vendor, "NEW", 1)])
        create = [
            "CREATE OR REPLACE FUNCTION dataflows_rollup_insert() RETURNS trigger AS $$\n"
            f"BEGIN\n{insert_body};\nRETURN NULL;\nEND\n$$ LANGUAGE plpgsql",
            "CREATE OR REPLACE FUNCTION dataflows_rollup_update() RETURNS trigger AS $$\n"
            f"BEGIN\n{update_body};\nRETURN NULL;\nEND\n$$ LANGUAGE plpgsql",
            f"CREATE TRIGGER dataflows_run_rollup_insert AFTER INSERT ON {RUNS} "
            f"FOR EACH ROW WHEN ({insert_when}) EXECUTE FUNCTION dataflows_rollup_insert()",
            f"CREATE TRIGGER dataflows_run_rollup_update AFTER UPDATE OF {', '.join(WATCHED)} "
            f"ON {RUNS} FOR EACH ROW WHEN ({update_when}) "
            "EXECUTE FUNCTION dataflows_rollup_update()",
        ]
        drop = [
            f"DROP TRIGGER IF EXISTS dataflows_run_rollup_insert ON {RUNS}",
            f"DROP TRIGGER IF EXISTS dataflows_run_rollup_update ON {RUNS}",
            "DROP FUNCTION IF EXISTS dataflows_rollup_insert()",
            "DROP FUNCTION IF EXISTS dataflows_rollup_update()",
        ]
        return create, drop
    if vendor == "sqlite":
        insert_body = ";\n".join(_apply(vendor, "NEW", 1))
        update_body = ";\n".join([*_apply(vendor, "OLD", -1), *_apply(vendor, "NEW", 1)])
        create = [
            f"CREATE TRIGGER IF NOT EXISTS dataflows_run_rollup_insert AFTER INSERT ON {RUNS} "
            f"WHEN {insert_when}\nBEGIN\n{insert_body};\nEND",
            "CREATE TRIGGER IF NOT EXISTS dataflows_run_rollup_update "
            f"AFTER UPDATE OF {', '.join(WATCHED)} ON {RUNS} "
            f"WHEN {update_when}\nBEGIN\n{update_body};\nEND",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS dataflows_run_rollup_insert",
            "DROP TRIGGER IF EXISTS dataflows_run_rollup_update",
        ]
        return create, drop
    return [], []


def rebuild_statements(vendor: str, *, flows: int = 1, from_hour: bool = False) -> list[str]:
    """Statements inserting the rollups of ``flows`` flows, given as the first parameters.

    With ``from_hour``, one more parameter keeps the runs created from that hour on.
    """
    hour = hour_sql(vendor, "r.created_at")
    placeholders = ", ".join(["%s"] * flows)
    counted = f"r.data_flow_id IN ({placeholders}) AND r.deleted_at IS NULL AND {finished_sql('r')}"
    if from_hour:
        counted += " AND r.created_at >= %s"
    counts = ", ".join(f"COUNT(CASE WHEN r.status = '{status}' THEN 1 END)" for status in FINISHED)
    timed_duration = f"CASE WHEN {timed_sql('r')} THEN r.duration_ms END"
    return [
        f"INSERT INTO {ROLLUPS} (data_flow_id, hour, {', '.join(COUNT_COLUMNS)}, rated, "
        "duration_sum, duration_min, duration_max) "
        f"SELECT r.data_flow_id, {hour}, {counts}, COUNT({timed_duration}), "
        f"COALESCE(SUM({timed_duration}), 0), MIN({timed_duration}), MAX({timed_duration}) "
        f"FROM {RUNS} r WHERE {counted} GROUP BY r.data_flow_id, {hour}",
        f"INSERT INTO {BUCKETS} (data_flow_id, hour, bucket, count) "
        f"SELECT r.data_flow_id, {hour}, {bucket_sql('r.duration_ms')}, COUNT(*) "
        f"FROM {RUNS} r WHERE {counted} AND {timed_sql('r')} "
        f"GROUP BY r.data_flow_id, {hour}, {bucket_sql('r.duration_ms')}",
    ]
