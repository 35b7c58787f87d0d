"""Every write to a run's steps stamps the run's ``updated_at`` (a database trigger).

Live status follows runs through the indexed ``DataFlowRun.updated_at``; a step that starts
or ends must show there too. A trigger does it in the statement that writes the step, so a
stepped run costs two writes per step, not four, and no code path can forget it. On
PostgreSQL and SQLite; on other databases the executor stamps the run itself.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

POSTGRES_CREATE = [
    """
    CREATE OR REPLACE FUNCTION dataflows_step_touches_run() RETURNS trigger AS $$
    BEGIN
        UPDATE dataflows_dataflowrun SET updated_at = STATEMENT_TIMESTAMP()
        WHERE id IN (SELECT DISTINCT run_id FROM changed_steps);
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER dataflows_step_insert_touches_run
    AFTER INSERT ON dataflows_dataflowrunstep
    REFERENCING NEW TABLE AS changed_steps
    FOR EACH STATEMENT EXECUTE FUNCTION dataflows_step_touches_run()
    """,
    """
    CREATE TRIGGER dataflows_step_update_touches_run
    AFTER UPDATE ON dataflows_dataflowrunstep
    REFERENCING NEW TABLE AS changed_steps
    FOR EACH STATEMENT EXECUTE FUNCTION dataflows_step_touches_run()
    """,
]
POSTGRES_DROP = [
    "DROP TRIGGER IF EXISTS dataflows_step_insert_touches_run ON dataflows_dataflowrunstep",
    "DROP TRIGGER IF EXISTS dataflows_step_update_touches_run ON dataflows_dataflowrunstep",
    "DROP FUNCTION IF EXISTS dataflows_step_touches_run()",
]
# The same clock expression as Django's Now() on SQLite (UTC, to the millisecond).
SQLITE_CREATE = [
    """
    CREATE TRIGGER IF NOT EXISTS dataflows_step_insert_touches_run
    AFTER INSERT ON dataflows_dataflowrunstep
    BEGIN
        UPDATE dataflows_dataflowrun SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
        WHERE id = NEW.run_id;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS dataflows_step_update_touches_run
    AFTER UPDATE ON dataflows_dataflowrunstep
    BEGIN
        UPDATE dataflows_dataflowrun SET updated_at = STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')
        WHERE id = NEW.run_id;
    END
    """,
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS dataflows_step_insert_touches_run",
    "DROP TRIGGER IF EXISTS dataflows_step_update_touches_run",
]
STATEMENTS = {
    "postgresql": (POSTGRES_CREATE, POSTGRES_DROP),
    "sqlite": (SQLITE_CREATE, SQLITE_DROP),
}


def create_triggers(apps: Any, schema_editor: Any) -> None:
    create, _drop = STATEMENTS.get(schema_editor.connection.vendor, ([], []))
    for sql in create:
        schema_editor.execute(sql, params=None)


def drop_triggers(apps: Any, schema_editor: Any) -> None:
    _create, drop = STATEMENTS.get(schema_editor.connection.vendor, ([], []))
    for sql in drop:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("dataflows", "0002_run_control_steps_and_stats")]

    operations = [migrations.RunPython(create_triggers, drop_triggers, elidable=False)]
