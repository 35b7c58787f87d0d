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
#: The run's cost, added up over a rollup's rated runs with a duration (migration 0011):
#: rollup column prefix -> run column. Each prefix has ``_count`` (the runs that have a
#: value) and ``_sum`` columns, so an average is exact whichever runs lack one.
COSTS = {"cpu_time": "cpu_time_ms", "db_queries": "db_queries"}


def cost_columns(costs: bool = True) -> tuple[str, ...]:
    """The rollup columns of the run's cost, in order (none before migration 0011)."""
    if not costs:
        return ()
    return tuple(f"{prefix}_{suffix}" for prefix in COSTS for suffix in ("count", "sum"))


def _listed(columns: tuple[str, ...]) -> str:
    """``columns`` to follow others in a list: each after a comma."""
    return "".join(f", {column}" for column in columns)


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


def _cost_values(row: str, sign: int, timed: str) -> list[str]:
    """The values of :func:`cost_columns` for the run ``row``, in order."""
    values = []
    for column in COSTS.values():
        has = f"{timed} AND {row}.{column} IS NOT NULL"
        values += [
            f"CASE WHEN {has} THEN {sign} ELSE 0 END",
            f"CASE WHEN {has} THEN {sign} * {row}.{column} ELSE 0 END",
        ]
    return values


def _apply(vendor: str, row: str, sign: int, *, costs: bool = True) -> list[str]:
    """Statements adding (``sign`` 1) or taking out (-1) the finished run ``row``."""
    hour = hour_sql(vendor, f"{row}.created_at")
    counted = f"{row}.deleted_at IS NULL AND {finished_sql(row)}"
    timed = f"{counted} AND {timed_sql(row)}"
    counts = ", ".join(
        f"CASE WHEN {row}.status = '{status}' THEN {sign} ELSE 0 END" for status in FINISHED
    )
    extreme = f"CASE WHEN {timed_sql(row)} AND {sign} > 0 THEN {row}.duration_ms END"
    added = (*COUNT_COLUMNS, "rated", "duration_sum", *cost_columns(costs))
    cost_values = "".join(f", {value}" for value in _cost_values(row, sign, timed_sql(row)))
    statements = [
        f"INSERT INTO {ROLLUPS} (data_flow_id, hour, {', '.join(COUNT_COLUMNS)}, rated, "
        f"duration_sum, duration_min, duration_max{_listed(cost_columns(costs))}) "
        f"SELECT {row}.data_flow_id, {hour}, {counts}, "
        f"CASE WHEN {timed_sql(row)} THEN {sign} ELSE 0 END, "
        f"CASE WHEN {timed_sql(row)} THEN {sign} * {row}.duration_ms ELSE 0 END, "
        f"{extreme}, {extreme}{cost_values if costs else ''} WHERE {counted} "
        "ON CONFLICT (data_flow_id, hour) DO UPDATE SET "
        + ", ".join(f"{column} = {ROLLUPS}.{column} + excluded.{column}" for column in added)
        + f", duration_min = {_keep_lower('duration_min')}"
        + f", duration_max = {_keep_higher('duration_max')}"
        # The coarser levels fold a changed row again (a new row is changed by default).
        + (", changed = TRUE" if costs else ""),
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


def _watched(costs: bool) -> tuple[str, ...]:
    return (*WATCHED, *COSTS.values()) if costs else WATCHED


def _changed(vendor: str, costs: bool) -> str:
    distinct = "IS DISTINCT FROM" if vendor == "postgresql" else "IS NOT"
    return " OR ".join(f"OLD.{column} {distinct} NEW.{column}" for column in _watched(costs))


def _plpgsql_block(row: str, sign: int, costs: bool) -> str:
    """The statements for ``row`` inside an ``IF``: a run that does not count runs none.

    A worker finishing a run fires the update trigger with an ``OLD`` row that was never
    counted: its four statements of taking out are skipped, not executed to find no row.
    """
    statements = ";\n".join(_apply("postgresql", row, sign, costs=costs))
    return f"IF {row}.deleted_at IS NULL AND {finished_sql(row)} THEN\n{statements};\nEND IF"


def trigger_statements(vendor: str, *, costs: bool = True) -> tuple[list[str], list[str]]:
    """The statements creating, and those dropping, the rollup triggers on ``vendor``.

    ``costs=False`` gives the triggers of migration 0007, before rollups added up the run's
    cost.
    """
    insert_when = f"NEW.deleted_at IS NULL AND {finished_sql('NEW')}"
    update_when = (
        f"({finished_sql('OLD')} OR {finished_sql('NEW')}) AND ({_changed(vendor, costs)})"
    )
    watched = ", ".join(_watched(costs))
    if vendor == "postgresql":
        insert_body = ";\n".join(_apply(vendor, "NEW", 1, costs=costs))
        update_body = f"{_plpgsql_block('OLD', -1, costs)};\n{_plpgsql_block('NEW', 1, costs)}"
        create = [
            "CREATE OR REPLACE FUNCTION dataflows_rollup_insert() RETURNS trigger AS $$\n"
            f"BEGIN\n{insert_body};\nRETURN NULL;\nEND\n$$ LANGUAGE plpgsql",
            "CREATE OR REPLACE FUNCTION dataflows_rollup_update() RETURNS trigger AS $$\n"
            f"BEGIN\n{update_body};\nRETURN NULL;\nEND\n$$ LANGUAGE plpgsql",
            f"CREATE TRIGGER dataflows_run_rollup_insert AFTER INSERT ON {RUNS} "
            f"FOR EACH ROW WHEN ({insert_when}) EXECUTE FUNCTION dataflows_rollup_insert()",
            f"CREATE TRIGGER dataflows_run_rollup_update AFTER UPDATE OF {watched} "
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
        insert_body = ";\n".join(_apply(vendor, "NEW", 1, costs=costs))
        update_body = ";\n".join(
            [*_apply(vendor, "OLD", -1, costs=costs), *_apply(vendor, "NEW", 1, costs=costs)]
        )
        create = [
            f"CREATE TRIGGER IF NOT EXISTS dataflows_run_rollup_insert AFTER INSERT ON {RUNS} "
            f"WHEN {insert_when}\nBEGIN\n{insert_body};\nEND",
            "CREATE TRIGGER IF NOT EXISTS dataflows_run_rollup_update "
            f"AFTER UPDATE OF {watched} ON {RUNS} "
            f"WHEN {update_when}\nBEGIN\n{update_body};\nEND",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS dataflows_run_rollup_insert",
            "DROP TRIGGER IF EXISTS dataflows_run_rollup_update",
        ]
        return create, drop
    return [], []


def rebuild_statements(
    vendor: str, *, flows: int = 1, from_hour: bool = False, costs: bool = True
) -> list[str]:
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
    cost_sums = "".join(
        f", COUNT(CASE WHEN {timed_sql('r')} THEN r.{column} END)"
        f", COALESCE(SUM(CASE WHEN {timed_sql('r')} THEN r.{column} END), 0)"
        for column in COSTS.values()
    )
    return [
        f"INSERT INTO {ROLLUPS} (data_flow_id, hour, {', '.join(COUNT_COLUMNS)}, rated, "
        f"duration_sum, duration_min, duration_max{_listed(cost_columns(costs))}) "
        f"SELECT r.data_flow_id, {hour}, {counts}, COUNT({timed_duration}), "
        f"COALESCE(SUM({timed_duration}), 0), MIN({timed_duration}), MAX({timed_duration})"
        f"{cost_sums if costs else ''} "
        f"FROM {RUNS} r WHERE {counted} GROUP BY r.data_flow_id, {hour}",
        f"INSERT INTO {BUCKETS} (data_flow_id, hour, bucket, count) "
        f"SELECT r.data_flow_id, {hour}, {bucket_sql('r.duration_ms')}, COUNT(*) "
        f"FROM {RUNS} r WHERE {counted} AND {timed_sql('r')} "
        f"GROUP BY r.data_flow_id, {hour}, {bucket_sql('r.duration_ms')}",
    ]


def cost_backfill_statement(vendor: str) -> str:
    """Fill the cost columns of the rollups there are from the runs still in the table.

    Migration 0011 runs it once: hours whose runs were pruned keep no cost (their averages
    are over the runs that had one in the rollups).
    """
    hour = hour_sql(vendor, "r.created_at")
    timed = f"r.deleted_at IS NULL AND {timed_sql('r')}"
    sums = ", ".join(
        f"COUNT(r.{column}) AS {prefix}_count, COALESCE(SUM(r.{column}), 0) AS {prefix}_sum"
        for prefix, column in COSTS.items()
    )
    assignments = ", ".join(f"{column} = costs.{column}" for column in cost_columns())
    return (
        f"UPDATE {ROLLUPS} SET {assignments} FROM (SELECT r.data_flow_id, {hour} AS hour, {sums} "
        f"FROM {RUNS} r WHERE {timed} GROUP BY r.data_flow_id, {hour}) AS costs "
        f"WHERE {ROLLUPS}.data_flow_id = costs.data_flow_id AND {ROLLUPS}.hour = costs.hour"
    )
