"""Backends: the loader, the sync and dummy backends, and dispatch failures."""

from __future__ import annotations

import datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_dataflows.backends import dispatch, get_backend, load_backend
from django_dataflows.backends.base import BaseBackend
from django_dataflows.backends.dummy import DummyBackend
from django_dataflows.backends.sync import SyncBackend
from django_dataflows.exceptions import EnqueueFailed
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db


class RefusingBackend(BaseBackend):
    """Stands in for a backend whose broker is down."""

    def enqueue(self, run):
        raise ConnectionError("broker unreachable at 127.0.0.1:1")


def test_the_default_backend_is_sync():
    assert isinstance(get_backend(), SyncBackend)
    assert get_backend().check() == []


def test_a_backend_path_that_cannot_be_imported_is_a_clear_error():
    with pytest.raises(ImproperlyConfigured, match="Could not import DATAFLOWS\\['BACKEND'\\]"):
        load_backend("myproject.backends.Missing")


def test_a_backend_path_to_something_else_is_a_clear_error():
    with pytest.raises(ImproperlyConfigured, match="is not a subclass of"):
        load_backend("django_dataflows.models.DataFlow")


def test_the_sync_backend_records_a_failure_without_raising():
    data_flow = DataFlowFactory(flow="tests.testapp.flows.Explode")
    run = data_flow.create_pending_run()

    SyncBackend().enqueue(run)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error_message == "boom"


def test_the_dummy_backend_records_and_runs_nothing_until_asked(dummy_backend):
    data_flow = DataFlowFactory()
    run = data_flow.create_pending_run()

    dispatch(run)

    assert isinstance(dummy_backend, DummyBackend)
    assert dummy_backend.enqueued == [run]
    assert DataFlowRun.objects.get().status == RunStatus.PENDING
    assert not Record.objects.exists()

    dummy_backend.run_all()

    assert DataFlowRun.objects.get().status == RunStatus.SUCCESS
    assert dummy_backend.enqueued == []


def test_run_all_goes_on_after_a_failing_flow(dummy_backend):
    failing = DataFlowFactory(flow="tests.testapp.flows.Explode").create_pending_run()
    working = DataFlowFactory().create_pending_run()
    dispatch(failing)
    dispatch(working)

    dummy_backend.run_all()

    statuses = dict(DataFlowRun.objects.values_list("pk", "status"))
    assert statuses == {failing.pk: RunStatus.FAILED, working.pk: RunStatus.SUCCESS}


def test_clear_forgets_recorded_runs(dummy_backend):
    dispatch(DataFlowFactory().create_pending_run())

    dummy_backend.clear()

    assert dummy_backend.enqueued == []


def test_a_refused_manual_run_is_failed_and_leaves_the_schedule(settings):
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    data_flow = DataFlowFactory(run_interval=3600)
    run = data_flow.create_pending_run()
    next_run_at = DataFlow.objects.get(pk=data_flow.pk).next_run_at

    with pytest.raises(EnqueueFailed, match="broker unreachable"):
        dispatch(run)

    run.refresh_from_db()
    data_flow.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error_message == "Could not enqueue the run: broker unreachable at 127.0.0.1:1"
    assert data_flow.last_run_status == RunStatus.FAILED
    assert data_flow.next_run_at == next_run_at


def test_a_refused_scheduled_run_gives_its_slot_back(settings):
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    slot = timezone.now() - datetime.timedelta(seconds=5)
    data_flow = DataFlowFactory(run_interval=3600)
    DataFlow.objects.filter(pk=data_flow.pk).update(next_run_at=slot)

    assert run_heartbeat().enqueue_failures == 1

    failed = data_flow.runs.get()
    assert failed.status == RunStatus.FAILED
    assert failed.scheduled_for is None
    assert slot.isoformat() in failed.error_message
    assert DataFlow.objects.get(pk=data_flow.pk).next_run_at == slot

    settings.DATAFLOWS = {}  # the broker is back
    assert run_heartbeat().flows_triggered == 1
    retried = data_flow.runs.get(status=RunStatus.SUCCESS)
    assert retried.scheduled_for == slot


def test_a_backend_that_cannot_be_loaded_fails_the_run_at_once(settings):
    settings.DATAFLOWS = {"BACKEND": "myproject.backends.Missing"}
    run = DataFlowFactory().create_pending_run()

    with pytest.raises(EnqueueFailed, match="Could not import"):
        dispatch(run)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
