"""Migrations that rewrite columns keep what the rows hold, both ways."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_ENGINE = [("dataflows", "0005_api")]


def migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def test_going_back_before_the_generated_durations_keeps_them() -> None:
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes("dataflows")
    from django_dataflows.models import DataFlowRun, DataFlowRunStep
    from tests.factories import DataFlowFactory

    started = timezone.now() - timedelta(minutes=5)
    flow = DataFlowFactory()
    run = DataFlowRun.objects.create(
        data_flow=flow,
        status="success",
        started_at=started,
        ended_at=started + timedelta(seconds=2),
    )
    DataFlowRunStep.objects.create(
        run=run,
        position=1,
        name="one",
        started_at=started,
        ended_at=started + timedelta(milliseconds=750),
    )
    unfinished = DataFlowRun.objects.create(data_flow=flow, status="pending")
    try:
        executor = migrate(BEFORE_ENGINE)
        state = executor.loader.project_state(BEFORE_ENGINE)
        OldRun = state.apps.get_model("dataflows", "DataFlowRun")
        OldStep = state.apps.get_model("dataflows", "DataFlowRunStep")
        assert OldRun.objects.get(pk=run.pk).duration_ms == 2000
        assert OldRun.objects.get(pk=unfinished.pk).duration_ms is None
        assert OldStep.objects.get(run_id=run.pk).duration_ms == 750
    finally:
        migrate(latest)
    assert DataFlowRun.objects.get(pk=run.pk).duration_ms == 2000
