"""Run statistics from rollups per flow and hour, kept by triggers on the run table.

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
    create, _drop = trigger_statements(vendor)
    if not create:
        return
    for sql in create:
        schema_editor.execute(sql, params=None)
    flow_ids = apps.get_model("dataflows", "DataFlow").objects.values_list("pk", flat=True)
    for flow_id in flow_ids.using(schema_editor.connection.alias).iterator():
        for sql in rebuild_statements(vendor):
            schema_editor.execute(sql, params=[flow_id])


def drop_triggers(apps: Any, schema_editor: Any) -> None:
    _create, drop = trigger_statements(schema_editor.connection.vendor)
    for sql in drop:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0005_api"),
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
        migrations.RunPython(create_triggers, drop_triggers, elidable=False),
    ]
