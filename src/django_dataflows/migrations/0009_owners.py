"""Owners of flows, and the audit trail."""

from __future__ import annotations

import django.core.serializers.json
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dataflows", "0008_observability"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="dataflow",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                help_text="Sees this flow and its runs without the model permissions; with DATAFLOWS['OWNERS_MANAGE_OWN_FLOWS'] also edits, starts and controls it.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="owned_data_flows",
                to=settings.AUTH_USER_MODEL,
                verbose_name="owner",
            ),
        ),
        migrations.CreateModel(
            name="AuditEntry",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        auto_now_add=True, db_index=True, verbose_name="created at"
                    ),
                ),
                (
                    "source",
                    models.CharField(
                        choices=[("admin", "Admin"), ("api", "API"), ("command", "Command")],
                        max_length=20,
                        verbose_name="source",
                    ),
                ),
                (
                    "action",
                    models.CharField(
                        choices=[
                            ("flow_created", "Flow created"),
                            ("flow_changed", "Flow changed"),
                            ("flow_deleted", "Flow deleted"),
                            ("flow_enabled", "Flow enabled"),
                            ("flow_disabled", "Flow disabled"),
                            ("run_started", "Run started"),
                            ("run_cancelled", "Run cancelled"),
                            ("run_paused", "Run paused"),
                            ("run_resumed", "Run resumed"),
                            ("run_retried", "Run retried"),
                            ("run_deleted", "Run deleted"),
                        ],
                        max_length=30,
                        verbose_name="action",
                    ),
                ),
                (
                    "flow_name",
                    models.CharField(blank=True, max_length=200, verbose_name="flow name"),
                ),
                (
                    "details",
                    models.JSONField(
                        blank=True,
                        default=dict,
                        encoder=django.core.serializers.json.DjangoJSONEncoder,
                        verbose_name="details",
                    ),
                ),
                (
                    "remote_addr",
                    models.GenericIPAddressField(
                        blank=True, null=True, verbose_name="remote address"
                    ),
                ),
                (
                    "actor",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                        verbose_name="actor",
                    ),
                ),
                (
                    "data_flow",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="dataflows.dataflow",
                        verbose_name="data flow",
                    ),
                ),
                (
                    "run",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="dataflows.dataflowrun",
                        verbose_name="run",
                    ),
                ),
            ],
            options={
                "verbose_name": "audit entry",
                "verbose_name_plural": "audit entries",
                "ordering": ("-created_at", "-pk"),
                "indexes": [
                    models.Index(
                        fields=["data_flow", "created_at"], name="dataflows_audit_flow_idx"
                    )
                ],
            },
        ),
    ]
