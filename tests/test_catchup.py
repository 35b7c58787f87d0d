"""Catch-up policies (latest, skip, all) after downtime, and the slot a flow sees."""

from __future__ import annotations

import datetime
import logging

import pytest
from django.db import transaction

from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from django_dataflows.scheduling import claim_due_flows
from tests.factories import DataFlowFactory

pytestmark = pytest.mark.django_db

UTC = datetime.UTC
HOUR = datetime.timedelta(hours=1)
# An outage from Friday 27 March 2026 to Monday 30 March: Berlin springs forward on Sunday
# 29 March at 02:00 (CET, +01:00 → CEST, +02:00).
DOWN_SINCE = datetime.datetime(2026, 3, 27, 1, 30, tzinfo=UTC)
BACK_AT = datetime.datetime(2026, 3, 30, 6, 0, tzinfo=UTC)


def flow_due_at(slot: datetime.datetime, **fields) -> DataFlow:
    flow = DataFlowFactory(**fields)
    DataFlow.objects.filter(pk=flow.pk).update(next_run_at=slot)
    flow.refresh_from_db()
    return flow


def heartbeats_until_idle(now: datetime.datetime, limit: int = 200) -> list[DataFlowRun]:
    """Heartbeats at ``now`` (each claimed run then ends), until one claims nothing."""
    runs = []
    for _ in range(limit):
        with transaction.atomic():
            claim = claim_due_flows(now)
        if not claim.runs:
            return runs
        for run in claim.runs:
            FlowExecutor.execute(run.data_flow, run=run)
        runs += claim.runs
    raise AssertionError(f"still claiming after {limit} heartbeats")


def test_latest_runs_the_missed_slots_once():
    flow_due_at(DOWN_SINCE, run_interval=3600)

    runs = heartbeats_until_idle(BACK_AT)

    assert [run.scheduled_for for run in runs] == [DOWN_SINCE]


def test_all_runs_every_missed_interval_slot_oldest_first_one_at_a_time():
    flow = flow_due_at(DOWN_SINCE, run_interval=3600, catchup="all")

    runs = heartbeats_until_idle(BACK_AT)

    hours = int((BACK_AT - DOWN_SINCE) / HOUR) + 1
    assert [run.scheduled_for for run in runs] == [DOWN_SINCE + i * HOUR for i in range(hours)]
    flow.refresh_from_db()
    assert flow.next_run_at == DOWN_SINCE + hours * HOUR  # the first slot after now


def test_all_runs_every_missed_cron_slot_by_the_dst_rule():
    # 02:30 Berlin does not exist on 29 March: that night runs at 03:00 CEST (01:00 UTC).
    flow_due_at(DOWN_SINCE, cron="30 2 * * *", timezone="Europe/Berlin", run_interval=None)
    DataFlow.objects.update(catchup="all")

    runs = heartbeats_until_idle(BACK_AT)

    assert [run.scheduled_for for run in runs] == [
        datetime.datetime(2026, 3, 27, 1, 30, tzinfo=UTC),
        datetime.datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
        datetime.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime.datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
    ]


def test_all_waits_for_the_active_run_before_the_next_missed_slot():
    flow_due_at(DOWN_SINCE, run_interval=3600, catchup="all")

    with transaction.atomic():
        first = claim_due_flows(BACK_AT)
    with transaction.atomic():
        second = claim_due_flows(BACK_AT)

    assert len(first.runs) == 1
    assert (second.runs, second.flows_skipped) == ([], 1)


def test_skip_drops_a_slot_found_late_and_waits_for_the_next_one(caplog):
    flow = flow_due_at(DOWN_SINCE, run_interval=3600, catchup="skip")

    with caplog.at_level(logging.INFO, logger="django_dataflows.heartbeat"):
        runs = heartbeats_until_idle(BACK_AT)

    assert runs == []
    flow.refresh_from_db()
    assert flow.next_run_at == BACK_AT + 30 * datetime.timedelta(minutes=1)
    assert "dropped" in caplog.text


def test_skip_still_runs_a_slot_only_a_little_late():
    flow_due_at(BACK_AT - datetime.timedelta(seconds=120), run_interval=3600, catchup="skip")

    assert len(heartbeats_until_idle(BACK_AT)) == 1


def test_the_grace_is_a_setting(settings):
    settings.DATAFLOWS = {"CATCHUP_GRACE": 60}
    flow_due_at(BACK_AT - datetime.timedelta(seconds=120), run_interval=3600, catchup="skip")

    assert heartbeats_until_idle(BACK_AT) == []


def test_a_caught_up_run_sees_its_own_slot_and_the_one_before():
    flow_due_at(
        DOWN_SINCE,
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        run_interval=None,
        flow="tests.testapp.flows.ReportsPipeline",
    )
    DataFlow.objects.update(catchup="all")

    runs = heartbeats_until_idle(BACK_AT)

    sunday = DataFlowRun.objects.get(pk=runs[2].pk)
    assert sunday.result == {
        "slot": "2026-03-29T01:00:00+00:00",
        "previous_slot": "2026-03-28T01:30:00+00:00",
        "upstream": {},
    }


def test_an_interval_runs_previous_slot_is_one_interval_earlier():
    flow = DataFlowFactory(run_interval=600)
    run = DataFlowRun(data_flow=flow, scheduled_for=BACK_AT)

    assert run.previous_slot == BACK_AT - datetime.timedelta(seconds=600)
    assert DataFlowRun(data_flow=flow).previous_slot is None


def test_a_yearly_cron_runs_previous_slot_is_a_year_earlier():
    flow = DataFlowFactory(cron="@yearly", run_interval=None, timezone="UTC")
    slot = datetime.datetime(2026, 1, 1, tzinfo=UTC)

    assert DataFlowRun(data_flow=flow, scheduled_for=slot).previous_slot == slot.replace(year=2025)


def test_a_run_outside_the_schedule_has_no_slot():
    flow = DataFlowFactory(run_interval=None, flow="tests.testapp.flows.ReportsPipeline")

    run = flow.create_pending_run()
    FlowExecutor.execute(flow, run=run)

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCESS
    assert run.result == {"slot": None, "previous_slot": None, "upstream": {}}
