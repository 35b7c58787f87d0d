"""OpenTelemetry traces (the ``otel`` extra): a span per run and a child per step.

A run's span, ``dataflows.run``, is a child of whatever span was current where the run was
handed to its backend: in this process (the sync backend), or in another one, the trace
context travelling in the Celery or Tasks message (W3C ``traceparent``). Each step of the
run is a child span, ``dataflows.step``. Without ``opentelemetry-api`` installed, or
without a tracer provider configured by the project (and no trace context received), no span
is made at all: a run costs one check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_dataflows.models import DataFlowRun

TRACER_NAME = "django_dataflows"
_AVAILABLE = find_spec("opentelemetry") is not None
#: The trace context a worker received with the run's message, while it executes the run.
_received: ContextVar[dict[str, str] | None] = ContextVar("dataflows_trace", default=None)


def outgoing_context() -> dict[str, str]:
    """The current trace context as message headers (``{}`` when there is none)."""
    if not _AVAILABLE:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def received_context(carrier: dict[str, str] | None) -> Iterator[None]:
    """Run the block (a worker executing a run) as a continuation of ``carrier``'s trace."""
    token = _received.set(carrier or None)
    try:
        yield
    finally:
        _received.reset(token)


def _tracing() -> bool:
    """Would a span made here be recorded? Not without a tracer provider set by the project.

    Without one, OpenTelemetry's tracer makes non-recording spans that only pass on the
    current context, which a span left unmade passes on as well.
    """
    if not _AVAILABLE:
        return False
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def run_span(run: DataFlowRun) -> Iterator[None]:
    """The span of one execution of a run's body."""
    carrier = _received.get()
    # A received trace context is made current even without a provider: what the body
    # hands on (a run it starts) continues the caller's trace.
    if not _AVAILABLE or (not carrier and not _tracing()):
        yield
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract(carrier) if carrier else None
    attributes: dict[str, Any] = {
        "dataflows.flow": run.data_flow.name,
        "dataflows.run_id": run.pk,
        "dataflows.attempt": run.attempt,
        "dataflows.trigger": run.trigger,
    }
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span("dataflows.run", context=parent, attributes=attributes):
        yield


@contextmanager
def step_span(name: str) -> Iterator[None]:
    """The span of one step, a child of the run's."""
    if not _tracing():
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span("dataflows.step", attributes={"dataflows.step": name}):
        yield
