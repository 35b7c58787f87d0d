"""Backends: the loader, the sync and dummy backends, and dispatch failures."""

from __future__ import annotations

import datetime
import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_dataflows.backends import get_backend, load_backend
from django_dataflows.backends.base import BaseBackend
from django_dataflows.backends.dummy import DummyBackend
from django_dataflows.backends.sync import SyncBackend
from django_dataflows.exceptions import EnqueueFailed
from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus
from django_dataflows.runs.starting import dispatch, dispatch_many
from django_dataflows.scheduling import run_heartbeat
from tests.factories import DataFlowFactory
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db

HOUR = datetime.timedelta(hours=1)


class RefusingBackend(BaseBackend):
    """Stands in for a backend whose broker is down."""

    def enqueue(self, run, *, delay=None):
        raise ConnectionError("broker unreachable at 127.0.0.1:1")


class BatchBackend(BaseBackend):
    """Takes a whole batch at once and refuses the flows named "refused-…"."""

    supports_async = True
    batches: list[list[int]] = []

    def enqueue(self, run, *, delay=None):
        raise AssertionError("a batch backend is given the whole batch")

    def enqueue_many(self, runs):
        BatchBackend.batches.append([run.pk for run in runs])
        return [
            (run, ConnectionError("queue full"))
            for run in runs
            if run.data_flow.name.startswith("refused-")
        ]


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


def test_the_heartbeat_hands_its_whole_batch_to_enqueue_many_in_one_call(settings):
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.BatchBackend"}
    BatchBackend.batches = []
    flows = [DataFlowFactory(name=name) for name in ("a", "refused-b", "c")]

    result = run_heartbeat()

    assert (result.flows_triggered, result.enqueue_failures) == (3, 1)
    assert len(BatchBackend.batches) == 1
    assert sorted(BatchBackend.batches[0]) == sorted(result.run_ids)
    statuses = {run.data_flow.name: run.status for run in DataFlowRun.objects.all()}
    assert statuses == {
        "a": RunStatus.PENDING,
        "refused-b": RunStatus.FAILED,
        "c": RunStatus.PENDING,
    }
    refused = DataFlowRun.objects.get(data_flow=flows[1])
    assert refused.error_message.startswith("Could not enqueue the run: queue full")


def test_the_default_enqueue_many_stops_at_the_first_refusal(settings):
    runs = [DataFlowFactory().create_pending_run() for _ in range(3)]
    tried = []

    class RefusesTheSecond(DummyBackend):
        def enqueue(self, run, *, delay=None):
            tried.append(run.pk)
            if run.pk == runs[1].pk:
                raise ConnectionError("broker unreachable")

    refused = RefusesTheSecond().enqueue_many(runs)

    assert tried == [runs[0].pk, runs[1].pk]  # the third is not tried
    assert [(run.pk, str(exc)) for run, exc in refused] == [
        (runs[1].pk, "broker unreachable"),
        (
            runs[2].pk,
            f"not tried, because the backend refused run {runs[1].pk} of the same batch just "
            "before: broker unreachable",
        ),
    ]


def test_dispatch_many_fails_every_run_when_the_backend_cannot_be_loaded(settings):
    settings.DATAFLOWS = {"BACKEND": "myproject.backends.Missing"}
    runs = [DataFlowFactory().create_pending_run() for _ in range(2)]

    assert dispatch_many(runs) == 2

    assert set(DataFlowRun.objects.values_list("status", flat=True)) == {RunStatus.FAILED}


def test_a_delay_is_refused_by_a_backend_that_cannot_defer():
    run = DataFlowFactory().create_pending_run()

    with pytest.raises(EnqueueFailed, match="SyncBackend cannot start a run after a delay"):
        dispatch(run, delay=5)

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


def test_the_dummy_backend_records_the_delay_it_was_given(dummy_backend):
    run = DataFlowFactory().create_pending_run()

    dispatch(run, delay=7.5)

    assert dummy_backend.enqueued == [run]
    assert dummy_backend.delays == {run.pk: 7.5}


def test_the_in_process_backend_skips_a_run_taken_meanwhile(caplog):
    caplog.set_level(logging.INFO, logger="django_dataflows")
    run = DataFlowFactory().create_pending_run()
    FlowExecutor.cancel(run)  # or run by another heartbeat while this batch was busy

    assert SyncBackend().enqueue_many([run]) == []

    assert f"Run {run.pk} of {run.data_flow.name!r} is cancelled, not pending" in caplog.text
    assert "failed" not in caplog.text
    assert DataFlowRun.objects.get().status == RunStatus.CANCELLED


class EndsRunsAtOnce(BaseBackend):
    """An in-process backend: the run has its outcome when enqueue() returns."""

    def enqueue(self, run, *, delay=None):
        DataFlowRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)


class EndsRunsElsewhere(EndsRunsAtOnce):
    supports_async = True


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("backend", "returned"),
    [("EndsRunsAtOnce", RunStatus.CANCELLED), ("EndsRunsElsewhere", RunStatus.PENDING)],
)
def test_trigger_run_reloads_the_run_only_from_a_backend_that_is_not_async(
    settings, backend, returned
):
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.{backend}"}

    run = DataFlowFactory().trigger_run()

    assert run.status == returned


def test_a_refused_backfill_run_gives_its_slot_back_to_the_backfill_not_the_schedule(settings):
    """The backfill runs that slot again once the broker is back; the flow's own schedule
    does not jump back to the past slot."""
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    data_flow = DataFlowFactory(cron="0 3 * * *", timezone="UTC", run_interval=None)
    next_run_at = DataFlow.objects.get(pk=data_flow.pk).next_run_at
    backfill = data_flow.backfill(today - datetime.timedelta(days=2), today)

    assert run_heartbeat().enqueue_failures == 1

    refused = data_flow.runs.get()
    assert (refused.status, refused.scheduled_for) == (RunStatus.FAILED, None)
    assert DataFlow.objects.get(pk=data_flow.pk).next_run_at == next_run_at
    backfill.refresh_from_db()
    assert (backfill.status, backfill.done) == ("running", 0)

    settings.DATAFLOWS = {}  # the broker is back
    while run_heartbeat().flows_triggered:
        pass

    backfill.refresh_from_db()
    assert (backfill.status, backfill.done) == ("done", 2)
    assert sorted(
        data_flow.runs.filter(status=RunStatus.SUCCESS).values_list("scheduled_for", flat=True)
    ) == [
        today - datetime.timedelta(days=2, hours=-3),
        today - datetime.timedelta(days=1, hours=-3),
    ]
    assert DataFlow.objects.get(pk=data_flow.pk).next_run_at == next_run_at


def test_a_refused_downstream_run_gives_its_generation_back(settings):
    """What the upstream runs made ready stays ready: the next heartbeat starts it."""
    orders = DataFlowFactory(name="orders")
    report = DataFlowFactory(name="report", run_interval=None)
    report.upstream_flows.set([orders])
    upstream_run = DataFlowRun.objects.create(data_flow=orders, status=RunStatus.SUCCESS)
    settings.DATAFLOWS = {"BACKEND": f"{__name__}.RefusingBackend"}
    DataFlow.objects.filter(pk=orders.pk).update(next_run_at=timezone.now() + HOUR)

    assert run_heartbeat().enqueue_failures == 1

    refused = report.runs.get()
    assert (refused.status, refused.trigger, refused.generation) == (
        RunStatus.FAILED,
        "upstream",
        None,
    )
    report.refresh_from_db()
    assert report.upstream_generation == 0

    settings.DATAFLOWS = {}  # the broker is back
    assert run_heartbeat().flows_triggered == 1

    ran = report.runs.get(status=RunStatus.SUCCESS)
    assert ran.generation == 1
    assert list(ran.upstream_runs.all()) == [upstream_run]
    assert run_heartbeat().flows_triggered == 0  # taken in once
