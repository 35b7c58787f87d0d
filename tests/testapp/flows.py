"""Flows the tests run: discovered like any installed app's flows module."""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

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
    """Terminate its own database connection (as a failover or an admin would).

    With ``quietly``, it swallows the error and returns: only writing the outcome fails.
    """

    def run(self) -> dict[str, bool]:
        from django.db import DatabaseError, connection

        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        except DatabaseError:
            if not self.configuration.get("quietly"):
                raise
        return {"ok": True}


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


# -- Flows of the run-control tests (tests/test_steps.py, tests/test_run_control.py) --------


def _request(flow: Flow, action: str) -> None:
    """Ask the executor to ``action`` ("pause" or "cancel") the flow's own run."""
    from django_dataflows.executor import FlowExecutor

    assert flow.context is not None
    getattr(FlowExecutor, action)(flow.context.run)


def _wait_for_pause_request(flow: Flow, seconds: float = 30.0) -> None:
    """Block until someone asks the run to pause (bounded): a step that outlives a request."""
    import time

    from django_dataflows.models import DataFlowRun

    assert flow.context is not None
    deadline = time.monotonic() + seconds
    run = DataFlowRun.objects.filter(pk=flow.context.run.pk)
    while not run.filter(pause_requested_at__isnull=False).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("nobody asked the run to pause")
        time.sleep(0.05)


class ThreeSteps(Flow):
    """Three declared steps; each records that it ran. Step two reads step one's result.

    Configuration: ``request`` ("pause" or "cancel") is asked for from inside ``request_in``
    (a step name); ``wait_in`` (a step name) blocks until a pause is requested; ``fail_in``
    (a step name) raises there; ``checkpoint_in`` (a step name) calls a checkpoint in it.
    """

    steps = ("one", "two", "three")

    def _ran(self, name: str) -> None:
        run_id = self.context.run.pk if self.context else None
        Record.objects.create(label=f"step:{name}", run_id=run_id)
        if self.configuration.get("request_in") == name:
            _request(self, self.configuration["request"])
        if self.configuration.get("wait_in") == name:
            _wait_for_pause_request(self)
        if self.configuration.get("checkpoint_in") == name:
            self.checkpoint()  # as a long loop inside the step would
        if self.configuration.get("fail_in") == name:
            raise ValueError(f"step {name} broke")

    def one(self) -> dict[str, int]:
        self._ran("one")
        return {"value": self.input.get("start", 41) + 1}

    def two(self) -> int:
        self._ran("two")
        return int(self.results["one"]["value"]) + 1

    def three(self) -> str:
        self._ran("three")
        return "done"


class CustomSteps(Flow):
    """A custom run() with ``with self.step()`` blocks."""

    def run(self) -> dict[str, Any]:
        with self.step("fetch") as step:
            step.result = [1, 2, 3]
        with self.step("sum") as step:
            step.result = sum(self.results["fetch"])
        return {"total": self.results["sum"]}


class LoopsUntilStopped(Flow):
    """Reports progress and checks in a loop until cancelled or paused (bounded)."""

    def run(self) -> dict[str, int]:
        import time

        assert self.context is not None
        Record.objects.create(label="loop started", run_id=self.context.run.pk)
        for i in range(int(self.configuration.get("iterations", 3000))):
            self.checkpoint()
            self.progress(i + 1, total=None, message="looping")
            time.sleep(0.01)
        return {"finished": True}


class SwallowsEverything(Flow):
    """Catches ``Exception`` around a checkpoint: an interruption must still get through."""

    def run(self) -> str:
        _request(self, "cancel")
        try:
            self.checkpoint()
        except Exception:
            return "swallowed"
        return "not interrupted"


class KeepsCursor(Flow):
    """Moves ``state["cursor"]`` on by ``step`` each run; fails afterwards if told to."""

    def run(self) -> dict[str, int]:
        cursor = int(self.state.get("cursor", 0)) + int(self.configuration.get("step", 1))
        self.state["cursor"] = cursor
        if self.configuration.get("fail"):
            raise ValueError("failed after moving the cursor")
        return {"cursor": cursor}


class BadState(Flow):
    """Replaces its state with something that is not a JSON object."""

    def run(self) -> None:
        self.state = ["not", "an", "object"]  # type: ignore[assignment]


class BadStepResult(Flow):
    """A step whose result cannot be stored as JSON."""

    steps = ("make", "after")

    def make(self) -> object:
        return object()

    def after(self) -> None:
        Record.objects.create(label="after ran")


class EchoInput(Flow):
    """Return the run's input."""

    def run(self) -> dict[str, Any]:
        return {"input": self.input}


class WithSchema(Flow):
    """A flow whose configuration must have a positive integer batch_size."""

    configuration_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {"batch_size": {"type": "integer", "minimum": 1}},
        "required": ["batch_size"],
    }

    def run(self) -> dict[str, Any]:
        return {"batch_size": self.configuration["batch_size"]}


class WaitsForGate(Flow):
    """Record that the body started, then wait (bounded) until the file ``gate`` exists.

    A long flow whose end the test decides: the run cannot finish before the test opens
    the gate, however fast or slow the machine.
    """

    def run(self) -> dict[str, bool]:
        import time
        from pathlib import Path

        assert self.context is not None
        Record.objects.create(label="gate:waiting", run_id=self.context.run.pk)
        gate = Path(self.configuration["gate"])
        deadline = time.monotonic() + float(self.configuration.get("seconds", 120))
        while not gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the gate was never opened")
            time.sleep(0.05)
        return {"opened": True}


class Talks(Flow):
    """Logs and prints what its configuration asks for (run logs).

    ``lines``: INFO lines on its own logger; ``prints``: lines to standard output;
    ``debug``: DEBUG lines; ``other``: WARNING lines on another logger; ``big``: one line of
    that many characters; ``odd``: bytes that are not UTF-8, a lone surrogate and a NUL;
    ``bad_args``: a record whose ``%`` arguments fail to format; ``thread``: a line
    logged from a thread the flow starts; ``replace_stdout``: leave ``sys.stdout``
    replaced; ``queries``: how many queries to make; ``fail``: raise at the end.
    """

    def run(self) -> dict[str, Any]:
        import logging
        import sys
        import threading

        config = self.configuration
        for number in range(config.get("lines", 0)):
            self.logger.info("line %s", number)
        for number in range(config.get("prints", 0)):
            print(f"printed {number}")
        for number in range(config.get("debug", 0)):
            self.logger.debug("debug %s", number)
        for number in range(config.get("other", 0)):
            logging.getLogger("tests.somelibrary").warning("library says %s", number)
        if config.get("big"):
            self.logger.info("x" * config["big"])
        if config.get("odd"):
            self.logger.info("bytes %s", b"\xff\xfe")
            self.logger.info("surrogate \udcff and NUL \x00 end")
        if config.get("bad_args"):
            self.logger.info("%d rows", "not a number")
        if config.get("thread"):
            thread = threading.Thread(
                target=lambda: logging.getLogger("tests.elsewhere").warning("from a thread")
            )
            thread.start()
            thread.join()
        if config.get("replace_stdout"):
            import io

            sys.stdout = io.StringIO()
            print("into the flow's own buffer")
        for _ in range(config.get("queries", 0)):
            Record.objects.count()
        if config.get("fail"):
            try:
                raise KeyError("missing")
            except KeyError:
                self.logger.exception("could not find it")
            raise ValueError("talked, then failed")
        return {"said": config.get("lines", 0)}


class TalksInSteps(Flow):
    """Logs one line in each of its two steps."""

    steps = ("extract", "load")

    def extract(self) -> int:
        self.logger.info("extracting")
        return 1

    def load(self) -> int:
        self.logger.warning("loading")
        run_id = self.context.run.pk if self.context else None
        if (
            self.configuration.get("pause_once")
            and not Record.objects.filter(label="paused", run_id=run_id).exists()
        ):
            Record.objects.create(label="paused", run_id=run_id)
            _request(self, "pause")
            self.checkpoint()
        return 2


class ReportsPipeline(Flow):
    """Return what the flow sees of its pipeline: slot, previous slot, upstream results."""

    def run(self) -> dict[str, Any]:
        return {
            "slot": self.slot.isoformat() if self.slot else None,
            "previous_slot": self.previous_slot.isoformat() if self.previous_slot else None,
            "upstream": self.upstream_results,
        }
