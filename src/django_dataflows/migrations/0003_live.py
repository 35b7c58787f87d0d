"""Merge migration: the live branch carries both 0003_api (with 0003_schedules) and
0003_runcontrol. No schema of its own; drop it when the 0003s are chained on main."""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("dataflows", "0003_api"), ("dataflows", "0003_runcontrol")]

    operations = []
