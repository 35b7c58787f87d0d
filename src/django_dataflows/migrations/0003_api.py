# Covering indexes for run statistics (bench/stats.py): index-only scans on PostgreSQL.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0002_run_control_steps_and_stats"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                fields=["created_at"],
                include=("data_flow", "status", "duration_ms", "deleted_at"),
                name="dataflows_run_created_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="dataflowrun",
            index=models.Index(
                fields=["data_flow", "status"],
                include=("duration_ms", "deleted_at", "created_at"),
                name="dataflows_run_flow_status_idx",
            ),
        ),
    ]
