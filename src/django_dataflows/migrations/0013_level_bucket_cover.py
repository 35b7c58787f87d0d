"""A covering index on the level histograms: a page's flows are read from the index alone.

Built with ``CREATE INDEX CONCURRENTLY`` on PostgreSQL, so the heartbeat's fold keeps
writing the levels meanwhile (the migration is not atomic for that reason); elsewhere a
plain ``CREATE INDEX``.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


class AddIndexConcurrentlyOnPostgreSQL(migrations.AddIndex):
    """``AddIndex``, concurrently where the database can (without ``django.contrib.postgres``,
    which a project on SQLite may not have the driver for)."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        self._change(schema_editor, to_state.apps.get_model(app_label, self.model_name), add=True)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        self._change(schema_editor, model, add=False)

    def _change(self, schema_editor: Any, model: Any, *, add: bool) -> None:
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        change = schema_editor.add_index if add else schema_editor.remove_index
        if schema_editor.connection.vendor != "postgresql":
            change(model, self.index)
            return
        if add:
            # A build that failed halfway leaves an invalid index of that name behind; the
            # next attempt starts afresh.
            name = schema_editor.quote_name(self.index.name)
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        change(model, self.index, concurrently=True)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("dataflows", "0012_rollup_levels"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgreSQL(
            model_name="runbucketlevel",
            index=models.Index(
                fields=["span", "flow_id", "start", "bucket", "count"],
                name="dataflows_lvbucket_cover_idx",
            ),
        ),
    ]
