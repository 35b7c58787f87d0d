"""Cron schedules: validation, our DST rule, the claim, manual runs, upcoming runs.

Every DST case uses fixed instants (2026 transition days), never the clock.
"""

from __future__ import annotations

import datetime
import logging

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from django_dataflows.models import DataFlow, DataFlowRun, RunTrigger
from django_dataflows.schedules import (
    InvalidSchedule,
    cron_error,
    describe_cron,
    next_cron_slot,
    upcoming_cron_slots,
)
from django_dataflows.scheduling import claim_due_flows
from tests.factories import DataFlowFactory

pytestmark = pytest.mark.django_db

UTC = datetime.UTC


def at(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)


def slots(expression, zone, after, count=3):
    return upcoming_cron_slots(expression, zone, after, count)


# -- the DST rule, Europe/Berlin (2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00) -------


def test_berlin_spring_forward_runs_a_missing_0230_at_0300_local_once():
    assert slots("30 2 * * *", "Europe/Berlin", at(2026, 3, 28, 12)) == [
        at(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        at(2026, 3, 30, 0, 30),  # 02:30 CEST again the next day
        at(2026, 3, 31, 0, 30),
    ]


def test_berlin_fall_back_runs_an_ambiguous_0230_once_at_its_first_occurrence():
    assert slots("30 2 * * *", "Europe/Berlin", at(2026, 10, 24, 12)) == [
        at(2026, 10, 25, 0, 30),  # 02:30 CEST, not again at 02:30 CET (01:30 UTC)
        at(2026, 10, 26, 1, 30),  # 02:30 CET
        at(2026, 10, 27, 1, 30),
    ]


def test_berlin_fall_back_from_inside_the_repeated_hour_waits_for_the_next_day():
    # 02:40 CET: the day's 02:30 has already run at its first occurrence.
    assert next_cron_slot("30 2 * * *", "Europe/Berlin", at(2026, 10, 25, 1, 40)) == at(
        2026, 10, 26, 1, 30
    )


def test_berlin_wildcard_hours_fire_at_every_real_instant_through_both_transitions():
    assert slots("*/30 * * * *", "Europe/Berlin", at(2026, 10, 25, 0, 10), 4) == [
        at(2026, 10, 25, 0, 30),  # 02:30 CEST
        at(2026, 10, 25, 1, 0),  # 02:00 CET
        at(2026, 10, 25, 1, 30),  # 02:30 CET: a real instant of its own
        at(2026, 10, 25, 2, 0),
    ]
    assert slots("0 * * * *", "Europe/Berlin", at(2026, 3, 29, 0, 10), 2) == [
        at(2026, 3, 29, 1, 0),  # 03:00 CEST follows 01:00 CET: one hour later, nothing skipped
        at(2026, 3, 29, 2, 0),
    ]


def test_berlin_several_times_inside_the_gap_run_once_after_it():
    assert slots("*/15 2 * * *", "Europe/Berlin", at(2026, 3, 28, 12), 2) == [
        at(2026, 3, 29, 1, 0),
        at(2026, 3, 30, 0, 0),
    ]


# -- the DST rule, America/New_York (2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00) ----


def test_new_york_spring_forward_runs_a_missing_0230_at_0300_local():
    assert slots("30 2 * * *", "America/New_York", at(2026, 3, 7, 12), 2) == [
        at(2026, 3, 8, 7, 0),  # 03:00 EDT
        at(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_new_york_fall_back_runs_an_ambiguous_0130_once():
    assert slots("30 1 * * *", "America/New_York", at(2026, 10, 31, 12), 3) == [
        at(2026, 11, 1, 5, 30),  # 01:30 EDT, not again at 01:30 EST (06:30 UTC)
        at(2026, 11, 2, 6, 30),  # 01:30 EST
        at(2026, 11, 3, 6, 30),
    ]


def test_new_york_weekdays_at_0230_skip_the_weekend_and_keep_local_time():
    assert slots("30 2 * * 1-5", "America/New_York", at(2026, 3, 6, 12), 2) == [
        at(2026, 3, 9, 6, 30),  # Monday 02:30 EDT; the Sunday gap is not a weekday
        at(2026, 3, 10, 6, 30),
    ]


def test_a_blank_zone_means_settings_time_zone(settings):
    settings.TIME_ZONE = "America/New_York"

    assert next_cron_slot("0 9 * * *", "", at(2026, 6, 1, 0)) == at(2026, 6, 1, 13)


def test_macros_stand_for_their_expressions():
    assert next_cron_slot("@daily", "UTC", at(2026, 6, 1, 5)) == at(2026, 6, 2)
    assert next_cron_slot("@hourly", "UTC", at(2026, 6, 1, 5, 1)) == at(2026, 6, 1, 6)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "'61 * * * *' is not a valid cron expression: bad minute."),
        ("@reboot", "@reboot is not supported"),
        ("0 0 * * * *", "has 6"),
        ("0 0 *", "has 3"),
        ("@fortnightly", "Unknown macro @fortnightly"),
        ("0 0 30 2 *", "bad day-of-month"),
        ("x" * 101, "at most 100 characters"),
    ],
)
def test_bad_expressions_are_explained(expression, message):
    assert message in cron_error(expression)


def test_an_expression_that_cannot_be_evaluated_raises_invalid_schedule():
    with pytest.raises(InvalidSchedule, match="bad minute"):
        next_cron_slot("61 * * * *", "UTC", at(2026, 1, 1))
    with pytest.raises(InvalidSchedule, match="not a known time zone"):
        next_cron_slot("0 * * * *", "Mars/Olympus", at(2026, 1, 1))


def test_a_schedule_in_words_names_its_zone():
    assert describe_cron("30 2 * * 1-5", "Europe/Berlin") == (
        "At 02:30 on Monday through Friday (Europe/Berlin)"
    )
    assert describe_cron("@daily", "UTC") == "At 00:00 every day (UTC)"
    assert describe_cron("61 * * * *") == "invalid cron expression '61 * * * *'"


# -- the model: field errors, the constraint -----------------------------------------------


def cron_flow(**fields):
    defaults = {"run_interval": None, "cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"}
    return DataFlowFactory.build(**{**defaults, **fields})


def field_errors(data_flow):
    with pytest.raises(ValidationError) as raised:
        data_flow.full_clean()
    return raised.value.message_dict


def test_a_valid_cron_flow_passes_full_clean():
    cron_flow().full_clean()


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "cron", "bad minute"),
        ({"cron": "@reboot"}, "cron", "@reboot is not supported"),
        ({"cron": "0 0 * * * *"}, "cron", "five fields"),
        ({"run_interval": 60}, "cron", "not both"),
        ({"run_interval": 60}, "run_interval", "not both"),
        ({"timezone": "Mars/Olympus"}, "timezone", "'Mars/Olympus' is not a known time zone"),
        ({"alert_after": 0}, "alert_after", "greater than or equal to 1"),
        ({"alert_after": -5}, "alert_after", "greater than or equal to"),
        ({"alert_emails": "ops@example.com, not-an-address"}, "alert_emails", "'not-an-address'"),
        ({"disable_after_failures": 0}, "disable_after_failures", "greater than or equal to 1"),
    ],
)
def test_bad_schedule_input_is_a_field_error_naming_the_field(fields, field, message):
    errors = field_errors(cron_flow(**fields))

    assert message in " ".join(errors[field])


def test_the_database_refuses_a_flow_with_both_schedules():
    for fields in ({"run_interval": 60, "cron": "0 * * * *"},):
        with pytest.raises(IntegrityError), transaction.atomic():
            DataFlow.objects.create(name="x", flow="tests.testapp.flows.CountRows", **fields)


def test_the_database_refuses_a_non_positive_alert_after():
    with pytest.raises(IntegrityError), transaction.atomic():
        DataFlowFactory(alert_after=0)


# -- next_run_at, the claim, manual runs -----------------------------------------------------


def test_a_new_cron_flow_is_due_at_its_first_slot(monkeypatch):
    data_flow = DataFlowFactory(run_interval=None, cron="0 6 * * *", timezone="Europe/Berlin")

    assert data_flow.next_run_at == data_flow.upcoming_runs(1, now=data_flow.created_at)[0]
    assert data_flow.next_run_at.astimezone(data_flow_zone()).hour == 6


def data_flow_zone():
    import zoneinfo

    return zoneinfo.ZoneInfo("Europe/Berlin")


def due_cron_flow(slot, **fields):
    data_flow = DataFlowFactory(run_interval=None, **{"cron": "30 2 * * *", **fields})
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)
    data_flow.refresh_from_db()
    return data_flow


def test_the_claim_runs_the_slot_and_moves_to_the_next_one_by_the_dst_rule(dummy_backend):
    slot = at(2026, 3, 28, 1, 30)  # 02:30 CET, the day before spring forward
    data_flow = due_cron_flow(slot, timezone="Europe/Berlin")

    with transaction.atomic():
        claim = claim_due_flows(slot + datetime.timedelta(seconds=5))

    assert [run.scheduled_for for run in claim.runs] == [slot]
    data_flow.refresh_from_db()
    assert data_flow.next_run_at == at(2026, 3, 29, 1, 0)  # 03:00 CEST


def test_missed_cron_slots_collapse_into_one_run(dummy_backend):
    slot = at(2026, 6, 1, 0, 30)
    data_flow = due_cron_flow(slot, timezone="Europe/Berlin")
    three_days_later = slot + datetime.timedelta(days=3, hours=1)

    with transaction.atomic():
        claim = claim_due_flows(three_days_later)

    assert len(claim.runs) == 1
    data_flow.refresh_from_db()
    assert data_flow.next_run_at == at(2026, 6, 5, 0, 30)


def test_a_stored_invalid_cron_is_skipped_and_logged_while_others_run(dummy_backend, caplog):
    slot = at(2026, 6, 1, 0, 30)
    broken = due_cron_flow(slot, name="broken")
    DataFlow.objects.filter(pk=broken.pk).update(cron="61 * * * *")
    working = due_cron_flow(slot, name="working")

    with caplog.at_level(logging.ERROR, logger="django_dataflows.heartbeat"), transaction.atomic():
        claim = claim_due_flows(slot)

    assert [run.data_flow_id for run in claim.runs] == [working.pk]
    assert "'broken' skipped: its schedule is invalid" in caplog.text
    broken.refresh_from_db()
    assert broken.next_run_at == slot  # still due: the admin shows it until it is fixed
    assert broken.upcoming_runs(5) == []
    assert "bad minute" in broken.schedule_error


def test_a_manual_run_never_moves_a_cron_flows_next_slot(dummy_backend):
    data_flow = DataFlowFactory(run_interval=None, cron="0 6 * * *", timezone="Europe/Berlin")
    slot = data_flow.next_run_at

    data_flow.trigger_run(trigger=RunTrigger.MANUAL)

    data_flow.refresh_from_db()
    assert data_flow.next_run_at == slot
    assert DataFlowRun.objects.get().trigger == RunTrigger.MANUAL


def test_switching_an_interval_flow_to_cron_moves_its_next_run_to_a_slot():
    data_flow = DataFlowFactory(run_interval=60)

    data_flow.run_interval, data_flow.cron, data_flow.timezone = None, "0 6 * * *", "UTC"
    data_flow.save()

    data_flow.refresh_from_db()
    assert (data_flow.next_run_at.hour, data_flow.next_run_at.minute) == (6, 0)


# -- upcoming_runs ---------------------------------------------------------------------------


def test_upcoming_runs_of_a_cron_flow_come_from_the_expression_strictly_after_now():
    data_flow = DataFlowFactory(run_interval=None, cron="0 6 * * *", timezone="UTC")

    assert data_flow.upcoming_runs(3, now=at(2026, 6, 1, 6)) == [
        at(2026, 6, 2, 6),
        at(2026, 6, 3, 6),
        at(2026, 6, 4, 6),
    ]


def test_upcoming_runs_of_an_interval_flow_start_at_next_run_at_or_now():
    data_flow = DataFlowFactory(run_interval=600)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=at(2026, 6, 1, 6))
    data_flow.refresh_from_db()

    assert data_flow.upcoming_runs(2, now=at(2026, 6, 1, 5)) == [
        at(2026, 6, 1, 6),
        at(2026, 6, 1, 6, 10),
    ]
    assert data_flow.upcoming_runs(2, now=at(2026, 6, 1, 7)) == [
        at(2026, 6, 1, 7),
        at(2026, 6, 1, 7, 10),
    ]


def test_a_flow_saved_with_an_invalid_cron_is_due_now_and_says_why():
    # objects.create() skips full_clean(): the flow is due at once, so the heartbeat logs
    # the problem instead of the flow silently never running.
    data_flow = DataFlowFactory(run_interval=None, cron="61 * * * *")

    assert data_flow.next_run_at <= data_flow.created_at + datetime.timedelta(seconds=1)
    assert "bad minute" in data_flow.schedule_error
    assert data_flow.upcoming_runs(3) == []


def test_an_interval_flow_has_no_schedule_error():
    assert DataFlowFactory(run_interval=60).schedule_error is None


def test_a_project_wide_alert_address_may_be_a_single_string(settings):
    settings.DATAFLOWS = {"ALERT_EMAILS": "ops@example.com"}

    assert DataFlowFactory().alert_recipients == ["ops@example.com"]
    assert DataFlowFactory(alert_emails="a@example.com; b@example.com").alert_recipients == [
        "a@example.com",
        "b@example.com",
    ]
