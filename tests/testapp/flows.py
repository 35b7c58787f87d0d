"""Flows the tests run: discovered like any installed app's flows module."""

from __future__ import annotations

import datetime
from typing import Any

from django_dataflows import Flow, PermanentFlowError
from tests.testapp.models import Record


class CountRows(Flow):
    """Record one row per run and return how many rows there are."""

    def run(self) -> dict[str, Any]:
        label = self.configuration.get("label", "count")
        run = self.context.run if self.context else None
        Record.objects.create(label=label, run_id=run.pk if run else None)
        return {"rows": Record.objects.filter(label=label).count()}


class Explode(Flow):
    """Always fail with a ValueError."""

    def run(self) -> None:
        raise ValueError(self.configuration.get("message", "boom"))


class RefuseForever(Flow):
    """Fail with an error that retrying cannot fix."""

    def run(self) -> None:
        raise PermanentFlowError("the input file is corrupt")


class TimesOut(Flow):
    """Fail the way a backend's time limit makes a flow fail."""

    def run(self) -> None:
        from django_dataflows.executor import FlowTimeout

        raise FlowTimeout("took longer than allowed")


class DividesByZero(Flow):
    """Fail with ZeroDivisionError."""

    def run(self) -> float:
        return 1 / 0


class ReturnsObject(Flow):
    """Return something that cannot be stored as JSON."""

    def run(self) -> object:
        return object()


class ReturnsDate(Flow):
    """Return a date (stored with Django's JSON encoder)."""

    def run(self) -> dict[str, Any]:
        return {"day": datetime.date(2026, 1, 2)}


class EchoConfiguration(Flow):
    """Return the configuration and what the context says."""

    def run(self) -> dict[str, Any]:
        assert self.context is not None
        return {
            "configuration": self.configuration,
            "data_flow": self.context.data_flow.name,
            "run_id": self.context.run.pk,
            "attempt": self.context.attempt,
        }


class AbstractBase(Flow):
    """Not registered itself."""

    abstract = True


class FromAbstractBase(AbstractBase):
    """Registered: a concrete subclass of an abstract base."""

    def run(self) -> str:
        return "ok"


def not_a_flow() -> str:
    """A module-level callable that a DataFlow row must never be able to reach."""
    Record.objects.create(label="not_a_flow was called")
    return "called"


# -- Flows of the asynchronous backends' tests (tests/test_celery.py, test_django_tasks.py) --


class FailsUntilAttempt(Flow):
    """Record each attempt; fail until attempt ``succeed_on`` (default 3), then succeed."""

    def run(self) -> dict[str, int]:
        assert self.context is not None
        attempt = self.context.attempt
        Record.objects.create(label="attempt", run_id=self.context.run.pk)
        if attempt < self.configuration.get("succeed_on", 3):
            raise ValueError(f"attempt {attempt} fails")
        return {"attempt": attempt}


class RecordsWorker(Flow):
    """Record which test worker ran it (its DATAFLOWS_TEST_WORKER environment variable)."""

    def run(self) -> dict[str, str]:
        import os

        assert self.context is not None
        worker = os.environ.get("DATAFLOWS_TEST_WORKER", "")
        Record.objects.create(label=f"worker:{worker}", run_id=self.context.run.pk)
        return {"worker": worker}


class Sleeps(Flow):
    """Sleep ``seconds`` (default 30): long enough for a time limit to interrupt it."""

    def run(self) -> dict[str, float]:
        import time

        seconds = float(self.configuration.get("seconds", 30))
        time.sleep(seconds)
        return {"slept": seconds}


class NoOp(Flow):
    """Do nothing (the throughput benchmark's flow)."""

    def run(self) -> None:
        return None


# -- Flows of the fault tests (tests/test_faults.py) ---------------------------------------


class Exits(Flow):
    """Call ``sys.exit(code)`` (default 3) on every attempt before ``succeed_on``."""

    def run(self) -> dict[str, int]:
        import sys

        assert self.context is not None
        Record.objects.create(label="exits", run_id=self.context.run.pk)
        if self.context.attempt < self.configuration.get("succeed_on", 99):
            sys.exit(self.configuration.get("code", 3))
        return {"attempt": self.context.attempt}


class Interrupts(Flow):
    """Raise ``KeyboardInterrupt``, as Ctrl+C in the flow's process would."""

    def run(self) -> None:
        raise KeyboardInterrupt


class ReturnsNaN(Flow):
    """Return a result with NaN in it (``json.dumps`` accepts it; PostgreSQL does not)."""

    def run(self) -> dict[str, float]:
        return {"ratio": float("nan")}


class ReturnsNul(Flow):
    """Return a string with a NUL character (PostgreSQL's jsonb refuses ``\\u0000``)."""

    def run(self) -> dict[str, str]:
        return {"name": "abc\x00def"}


class FailsWithNul(Flow):
    """Fail with a message holding a NUL character (PostgreSQL's text refuses it)."""

    def run(self) -> None:
        raise ValueError("bad byte \x00 in the input")


class EndsOwnConnection(Flow):
    """Terminate its own database connection (as a failover or an admin would)."""

    def run(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


class ReportsPidThenSleeps(Flow):
    """Record the process id running it, then sleep ``seconds`` (default 30).

    On attempt ``succeed_on`` or later it returns at once: a retry of a run whose process
    was killed succeeds.
    """

    def run(self) -> dict[str, int]:
        import os
        import time

        assert self.context is not None
        Record.objects.create(label=f"pid:{os.getpid()}", run_id=self.context.run.pk)
        if self.context.attempt < self.configuration.get("succeed_on", 99):
            time.sleep(float(self.configuration.get("seconds", 30)))
        return {"attempt": self.context.attempt}
