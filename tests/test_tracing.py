"""Traces (the ``otel`` extra): a span per run, a child per step, across processes."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
from django.db import connection
from opentelemetry import trace

from django_dataflows.executor import FlowExecutor
from django_dataflows.models import DataFlowRun, RunStatus
from django_dataflows.tracing import outgoing_context
from tests.async_workers import celery_worker, tasks_db_worker, wait_for, worker_database_url
from tests.conftest import skip_or_fail
from tests.factories import DataFlowFactory
from tests.tracing import describe, memory_exporter

pytestmark = pytest.mark.django_db


def test_a_run_is_a_span_with_a_child_per_step_under_the_callers_span():
    exporter = memory_exporter()
    flow = DataFlowFactory(name="two-steps", flow="tests.testapp.flows.TalksInSteps")

    with trace.get_tracer("tests").start_as_current_span("operator clicks run"):
        FlowExecutor.execute(flow)

    spans = {span.name: describe(span) for span in exporter.get_finished_spans()}
    steps = [describe(s) for s in exporter.get_finished_spans() if s.name == "dataflows.step"]
    caller, run = spans["operator clicks run"], spans["dataflows.run"]
    assert run["parent_id"] == caller["span_id"]
    assert run["trace_id"] == caller["trace_id"]
    assert run["attributes"]["dataflows.flow"] == "two-steps"
    assert [step["attributes"]["dataflows.step"] for step in steps] == ["extract", "load"]
    assert {step["parent_id"] for step in steps} == {run["span_id"]}


def test_a_failed_run_is_an_error_span():
    exporter = memory_exporter()
    flow = DataFlowFactory(flow="tests.testapp.flows.Explode")

    with pytest.raises(ValueError, match="boom"):
        FlowExecutor.execute(flow)

    [run] = [s for s in exporter.get_finished_spans() if s.name == "dataflows.run"]
    assert run.status.status_code.name == "ERROR"


def test_without_a_current_span_nothing_is_carried():
    memory_exporter()

    assert outgoing_context() == {}


# -- real workers: the trace context travels in the message ------------------------------


def worker_spans(path: Path, run: DataFlowRun) -> list[dict]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        span
        for span in spans
        if span["name"] == "dataflows.run" and span["attributes"]["dataflows.run_id"] == run.pk
    ]


def check_worker_span_is_a_child(worker, path: Path, settings, backend: str) -> None:
    memory_exporter()
    settings.DATAFLOWS = {**settings.DATAFLOWS, "BACKEND": backend}
    flow = DataFlowFactory(flow="tests.testapp.flows.NoOp")
    with trace.get_tracer("tests").start_as_current_span("starter") as starter:
        run = flow.trigger_run()
    expected = starter.get_span_context()

    [span] = wait_for(
        lambda: worker_spans(path, run) or None,
        what=f"the worker's span of run {run.pk}\n{worker.log()}",
    )

    # The span ends with the body, a moment before the outcome is stored.
    wait_for(
        lambda: DataFlowRun.objects.filter(pk=run.pk, status=RunStatus.SUCCESS).exists(),
        what=f"run {run.pk} to succeed\n{worker.log()}",
    )
    assert span["trace_id"] == expected.trace_id
    assert span["parent_id"] == expected.span_id


def needs_postgres() -> None:
    if connection.vendor != "postgresql":
        skip_or_fail("needs PostgreSQL: set DATABASE_URL=postgres://…")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_celery_workers_run_span_is_a_child_of_the_starters(tmp_path, settings):
    from tests.test_celery import redis_client

    needs_postgres()
    redis_client()
    spans = tmp_path / "spans.jsonl"
    env = {"DATABASE_URL": worker_database_url(), "DATAFLOWS_TEST_TRACE_FILE": str(spans)}
    with celery_worker("traces", ["default"], tmp_path / "celery.log", **env) as worker:
        check_worker_span_is_a_child(
            worker, spans, settings, "django_dataflows.backends.celery.CeleryBackend"
        )


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_tasks_workers_run_span_is_a_child_of_the_starters(tmp_path, settings):
    needs_postgres()
    if find_spec("django_tasks_db") is None:
        skip_or_fail('needs django-tasks-db: pip install -e ".[tasks]"')
    spans = tmp_path / "spans.jsonl"
    env = {"DATABASE_URL": worker_database_url(), "DATAFLOWS_TEST_TRACE_FILE": str(spans)}
    with tasks_db_worker("traces-tasks", ["default"], tmp_path / "tasks.log", **env) as worker:
        check_worker_span_is_a_child(
            worker, spans, settings, "django_dataflows.backends.django_tasks.DjangoTasksBackend"
        )
