"""A backend for the tests: executes every run at once, even in a request that asked the
in-process backend to wait for its response (how a custom in-process backend may behave)."""

from __future__ import annotations

from django_dataflows.backends.base import BaseBackend
from django_dataflows.backends.sync import execute_now
from django_dataflows.models import DataFlowRun


class AtOnceBackend(BaseBackend):
    """Execute the run now, in the calling process."""

    def enqueue(self, run: DataFlowRun, *, delay: float | None = None) -> None:
        execute_now(run)
