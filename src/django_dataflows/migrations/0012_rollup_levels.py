"""Rollups add up the run's cost, and fold into coarser levels (days, all flows).

The triggers are recreated with the cost columns (and mark the hourly rows they write as
changed, by the column's default); the rollups there are get their costs from the runs
still in the table. The levels start empty: the heartbeat folds the history a few days at a
time (``dataflows_rollups --fold`` does it at once), and statistics read the hourly rows
until then. See :mod:`django_dataflows.rollup_levels`.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from django_dataflows.rollup_sql import cost_backfill_statement, trigger_statements


def costed_triggers(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    _create, drop = trigger_statements(vendor, costs=False)
    create, _drop = trigger_statements(vendor)
    if not create:
        return
    for sql in [*drop, *create, cost_backfill_statement(vendor)]:
        schema_editor.execute(sql, params=None)


def plain_triggers(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    _create, drop = trigger_statements(vendor)
    create, _drop = trigger_statements(vendor, costs=False)
    for sql in [*drop, *create]:
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0011_audit_backfills"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunBucketLevel",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("span", models.PositiveSmallIntegerField(verbose_name="span (hours)")),
                ("flow_id", models.BigIntegerField(verbose_name="flow id")),
                ("start", models.DateTimeField(verbose_name="start")),
                ("bucket", models.IntegerField(verbose_name="bucket")),
                ("count", models.BigIntegerField(default=0, verbose_name="count")),
            ],
            options={
                "verbose_name": "run duration bucket level",
                "verbose_name_plural": "run duration bucket levels",
            },
        ),
        migrations.CreateModel(
            name="RunRollupLevel",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("span", models.PositiveSmallIntegerField(verbose_name="span (hours)")),
                (
                    "flow_id",
                    models.BigIntegerField(help_text="0 for all flows.", verbose_name="flow id"),
                ),
                ("start", models.DateTimeField(verbose_name="start")),
                ("success", models.BigIntegerField(default=0, verbose_name="success")),
                ("failed", models.BigIntegerField(default=0, verbose_name="failed")),
                ("cancelled", models.BigIntegerField(default=0, verbose_name="cancelled")),
                ("timed_out", models.BigIntegerField(default=0, verbose_name="timed out")),
                ("rated", models.BigIntegerField(default=0, verbose_name="rated with a duration")),
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
                    "cpu_time_count",
                    models.BigIntegerField(default=0, verbose_name="runs with a CPU time"),
                ),
                (
                    "cpu_time_sum",
                    models.BigIntegerField(default=0, verbose_name="CPU time sum (ms)"),
                ),
                (
                    "db_queries_count",
                    models.BigIntegerField(default=0, verbose_name="runs with a query count"),
                ),
                (
                    "db_queries_sum",
                    models.BigIntegerField(default=0, verbose_name="database queries sum"),
                ),
            ],
            options={
                "verbose_name": "run rollup level",
                "verbose_name_plural": "run rollup levels",
            },
        ),
        migrations.AddField(
            model_name="runrollup",
            name="changed",
            field=models.BooleanField(
                db_default=True,
                help_text="Changed since it was last folded into the coarser rollup levels.",
                verbose_name="changed",
            ),
        ),
        migrations.AddField(
            model_name="runrollup",
            name="cpu_time_count",
            field=models.IntegerField(default=0, verbose_name="runs with a CPU time"),
        ),
        migrations.AddField(
            model_name="runrollup",
            name="cpu_time_sum",
            field=models.BigIntegerField(default=0, verbose_name="CPU time sum (ms)"),
        ),
        migrations.AddField(
            model_name="runrollup",
            name="db_queries_count",
            field=models.IntegerField(default=0, verbose_name="runs with a query count"),
        ),
        migrations.AddField(
            model_name="runrollup",
            name="db_queries_sum",
            field=models.BigIntegerField(default=0, verbose_name="database queries sum"),
        ),
        migrations.AddIndex(
            model_name="runrollup",
            index=models.Index(
                condition=models.Q(("changed", True)),
                fields=["hour"],
                name="dataflows_rollup_changed_idx",
            ),
        ),
        migrations.AddConstraint(
            model_name="runbucketlevel",
            constraint=models.UniqueConstraint(
                fields=("span", "flow_id", "start", "bucket"), name="dataflows_bucket_level"
            ),
        ),
        migrations.AddConstraint(
            model_name="runrolluplevel",
            constraint=models.UniqueConstraint(
                fields=("span", "flow_id", "start"), name="dataflows_rollup_level"
            ),
        ),
        migrations.AddIndex(
            model_name="runrolluplevel",
            index=models.Index(fields=["span", "start"], name="dataflows_level_start_idx"),
        ),
        migrations.AddIndex(
            model_name="runbucketlevel",
            index=models.Index(fields=["span", "start"], name="dataflows_lvbucket_start_idx"),
        ),
        # A page far down the admin's run list skips rows on the index alone.
        migrations.RemoveIndex(
            model_name="dataflowrun",
            name="dataflows_run_newest_idx",
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                fields=["created_at", "id", "deleted_at"], name="dataflows_run_newest_idx"
            ),
        ),
        migrations.RunPython(costed_triggers, plain_triggers),
    ]
