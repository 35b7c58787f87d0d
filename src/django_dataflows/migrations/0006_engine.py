# One clock for a run: its timestamps default to the database's clock, and the durations of
# runs and steps are computed by the database from the stored start and end (a generated
# column), so they never mix two clocks, whatever code wrote the row. A column cannot
# become generated in place: the indexes on duration_ms are dropped, the column is added
# again as generated (existing rows get their duration from their own timestamps), and
# the indexes are rebuilt with the same definitions.

from importlib import import_module

import django.db.models.functions.datetime
from django.db import migrations, models

import django_dataflows.clock

# SQLite rebuilds the run and step tables for a generated column: the step triggers of
# 0003 (which name the run table) are dropped first and created again after.
step_triggers = import_module("django_dataflows.migrations.0003_runcontrol")

RATED = ("success", "failed", "timed_out")


def duration_field() -> models.GeneratedField:
    return models.GeneratedField(
        db_persist=True,
        expression=django_dataflows.clock.MillisecondsBetween("started_at", "ended_at"),
        output_field=models.BigIntegerField(blank=True, null=True, verbose_name="duration (ms)"),
        verbose_name="duration (ms)",
    )


DURATION_INDEXES = (
    models.Index(fields=["data_flow", "duration_ms"], name="dataflows_run_duration_idx"),
    models.Index(
        fields=["created_at", "data_flow", "status", "duration_ms", "deleted_at"],
        name="dataflows_run_created_idx",
    ),
    models.Index(
        fields=["data_flow", "status", "duration_ms", "deleted_at", "created_at"],
        name="dataflows_run_flow_stat_idx",
    ),
    models.Index(
        condition=models.Q(
            ("deleted_at__isnull", True),
            ("duration_ms__isnull", False),
            ("status__in", RATED),
        ),
        fields=["duration_ms"],
        name="dataflows_run_rated_ms_idx",
    ),
)


def keep_durations(apps: object, schema_editor: object) -> None:
    """Going back to 0005: fill the plain ``duration_ms`` columns again, as 0005 kept them.

    (Forwards there is nothing to do: the generated columns compute every row's duration.)
    """
    for name in ("DataFlowRun", "DataFlowRunStep"):
        model = apps.get_model("dataflows", name)  # type: ignore[attr-defined]
        alias = schema_editor.connection.alias  # type: ignore[attr-defined]
        model._base_manager.using(alias).filter(
            started_at__isnull=False, ended_at__isnull=False
        ).update(duration_ms=django_dataflows.clock.MillisecondsBetween("started_at", "ended_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0005_api"),
    ]

    operations = [
        migrations.RunPython(
            step_triggers.drop_triggers, step_triggers.create_triggers, elidable=False
        ),
        migrations.AlterField(
            model_name="dataflowrun",
            name="activated_at",
            field=models.DateTimeField(
                blank=True,
                db_default=django.db.models.functions.datetime.Now(),
                editable=False,
                help_text="When the run last moved into pending or in progress; timeouts count from it.",
                null=True,
                verbose_name="activated at",
            ),
        ),
        migrations.AlterField(
            model_name="dataflowrun",
            name="created_at",
            field=models.DateTimeField(
                db_default=django.db.models.functions.datetime.Now(), verbose_name="created at"
            ),
        ),
        *(
            migrations.RemoveIndex(model_name="dataflowrun", name=index.name)
            for index in DURATION_INDEXES
        ),
        # Runs last when unapplying, after the plain columns are back.
        migrations.RunPython(migrations.RunPython.noop, keep_durations, elidable=False),
        migrations.RemoveField(model_name="dataflowrun", name="duration_ms"),
        migrations.AddField(model_name="dataflowrun", name="duration_ms", field=duration_field()),
        migrations.RemoveField(model_name="dataflowrunstep", name="duration_ms"),
        migrations.AddField(
            model_name="dataflowrunstep", name="duration_ms", field=duration_field()
        ),
        *(migrations.AddIndex(model_name="dataflowrun", index=index) for index in DURATION_INDEXES),
        migrations.RunPython(
            step_triggers.create_triggers, step_triggers.drop_triggers, elidable=False
        ),
    ]
