# Indexes for run statistics (bench/stats.py): index-only scans on PostgreSQL, and the
# rated durations in order for the percentiles of many runs.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        # After the schedules migration.
        ("dataflows", "0004_schedules"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                fields=["created_at", "data_flow", "status", "duration_ms", "deleted_at"],
                name="dataflows_run_created_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                fields=["data_flow", "status", "duration_ms", "deleted_at", "created_at"],
                name="dataflows_run_flow_stat_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                condition=models.Q(
                    ("deleted_at__isnull", True),
                    ("duration_ms__isnull", False),
                    ("status__in", ("success", "failed", "timed_out")),
                ),
                fields=["duration_ms"],
                name="dataflows_run_rated_ms_idx",
            ),
        ),
    ]
