"""Run statistics from rollups per flow and hour, kept by triggers on the run table.

The run table keeps only the indexes a page or the run engine reads.

See :mod:`django_dataflows.rollup_sql`. The rollups of the runs already in the table are
computed here, flow by flow.
"""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

from django_dataflows.rollup_sql import rebuild_statements, trigger_statements


def create_triggers(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    create, _drop = trigger_statements(vendor, costs=False)
    if not create:
        return
    for sql in create:
        schema_editor.execute(sql, params=None)
    flow_ids = apps.get_model("dataflows", "DataFlow").objects.values_list("pk", flat=True)
    for flow_id in flow_ids.using(schema_editor.connection.alias).iterator():
        for sql in rebuild_statements(vendor, costs=False):
            schema_editor.execute(sql, params=[flow_id])


def _flow_indexes(schema_editor: Any) -> list[str]:
    """The plain indexes on the run table's ``data_flow_id`` alone (Django named them)."""
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "dataflows_dataflowrun")
    return [
        name
        for name, details in constraints.items()
        if details["index"]
        and not details["unique"]
        and not details["primary_key"]
        and details["columns"] == ["data_flow_id"]
    ]


def drop_flow_index(apps: Any, schema_editor: Any) -> None:
    """(data_flow, created_at) serves every lookup by flow: the foreign key's own index goes."""
    for name in _flow_indexes(schema_editor):
        schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(name)}")


def create_flow_index(apps: Any, schema_editor: Any) -> None:
    if not _flow_indexes(schema_editor):
        schema_editor.execute(
            "CREATE INDEX dataflows_run_flow_fk_idx ON dataflows_dataflowrun (data_flow_id)"
        )


def drop_triggers(apps: Any, schema_editor: Any) -> None:
    _create, drop = trigger_statements(schema_editor.connection.vendor)
    for sql in drop:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0006_engine"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunDurationBucket",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hour", models.DateTimeField(verbose_name="hour")),
                ("bucket", models.IntegerField(verbose_name="bucket")),
                ("count", models.IntegerField(default=0, verbose_name="count")),
                (
                    "data_flow",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="dataflows.dataflow",
                        verbose_name="data flow",
                    ),
                ),
            ],
            options={
                "verbose_name": "run duration bucket",
                "verbose_name_plural": "run duration buckets",
                "indexes": [models.Index(fields=["hour"], name="dataflows_bucket_hour_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("data_flow", "hour", "bucket"), name="dataflows_rollup_bucket"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="RunRollup",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "hour",
                    models.DateTimeField(
                        help_text="The hour the runs were created in.", verbose_name="hour"
                    ),
                ),
                ("success", models.IntegerField(default=0, verbose_name="success")),
                ("failed", models.IntegerField(default=0, verbose_name="failed")),
                ("cancelled", models.IntegerField(default=0, verbose_name="cancelled")),
                ("timed_out", models.IntegerField(default=0, verbose_name="timed out")),
                (
                    "rated",
                    models.IntegerField(
                        default=0,
                        help_text="Successful, failed and timed-out runs with a duration.",
                        verbose_name="rated with a duration",
                    ),
                ),
                (
                    "duration_sum",
                    models.BigIntegerField(default=0, verbose_name="duration sum (ms)"),
                ),
                (
                    "duration_min",
                    models.BigIntegerField(blank=True, null=True, verbose_name="shortest (ms)"),
                ),
                (
                    "duration_max",
                    models.BigIntegerField(blank=True, null=True, verbose_name="longest (ms)"),
                ),
                (
                    "data_flow",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="dataflows.dataflow",
                        verbose_name="data flow",
                    ),
                ),
            ],
            options={
                "verbose_name": "run rollup",
                "verbose_name_plural": "run rollups",
                "indexes": [models.Index(fields=["hour"], name="dataflows_rollup_hour_idx")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("data_flow", "hour"), name="dataflows_rollup_hour"
                    )
                ],
            },
        ),
        # Statistics read the rollups: the indexes kept only for them go (each one cost
        # every insert and finish of a run). Before the triggers: on SQLite, altering the
        # foreign key rebuilds the table, which would drop them.
        migrations.RemoveIndex(
            model_name="dataflowrun",
            name="dataflows_run_duration_idx",
        ),
        migrations.RemoveIndex(
            model_name="dataflowrun",
            name="dataflows_run_created_idx",
        ),
        migrations.RemoveIndex(
            model_name="dataflowrun",
            name="dataflows_run_flow_stat_idx",
        ),
        migrations.RemoveIndex(
            model_name="dataflowrun",
            name="dataflows_run_rated_ms_idx",
        ),
        # Only the state changes through Django: on SQLite an altered field rebuilds the
        # table, which breaks the step trigger of 0003; the index is dropped by name.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="dataflowrun",
                    name="data_flow",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="runs",
                        to="dataflows.dataflow",
                        verbose_name="data flow",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(drop_flow_index, create_flow_index)],
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(fields=["created_at"], name="dataflows_run_newest_idx"),
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                condition=models.Q(("deleted_at__isnull", False)),
                fields=["deleted_at"],
                name="dataflows_run_deleted_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                condition=models.Q(("status__in", ("failed", "timed_out"))),
                fields=["ended_at"],
                name="dataflows_run_failed_idx",
            ),
        ),
        migrations.RunPython(create_triggers, drop_triggers, elidable=False),
    ]
