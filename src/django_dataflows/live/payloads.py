"""Runs and steps as the REST API shows them, for the live status events.

Both use :mod:`django_dataflows.representation`: live status needs neither the API nor
Django REST framework.
"""

from __future__ import annotations

from typing import Any

from django_dataflows.models import DataFlowRun, DataFlowRunStep
from django_dataflows.representation import run_json, step_json


def step_payload(step: DataFlowRunStep) -> dict[str, Any]:
    """A step as the API shows it, plus ``run`` (its run's id)."""
    return {"run": step.run_id, **step_json(step)}


def run_payload(run: DataFlowRun, *, backtrace: bool) -> dict[str, Any]:
    """A run as the API shows it; ``error_backtrace`` only when ``backtrace`` (staff).

    Its steps are read through ``run.steps.all()``: prefetch them.
    """
    return run_json(run, backtrace=backtrace)
