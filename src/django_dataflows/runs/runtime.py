"""The executor's side of a running flow: its step rows, progress and checkpoints.

:class:`RunSession` is the :class:`~django_dataflows.flows.StepRecorder` the executor gives
a flow. It writes at most two rows per step (the step starts, the step ends), progress at
most about once a second, and reads the run's cancel and pause requests at checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models.functions import Now

from django_dataflows.events import emit
from django_dataflows.exceptions import RunInterrupted, UnstorableValue
from django_dataflows.flows import Step
from django_dataflows.models import (
    DataFlowRun,
    DataFlowRunStep,
    RunStatus,
    StepStatus,
    announce_runs_changed,
)
from django_dataflows.runs.sql import update_returning
from django_dataflows.runs.writes import touch_runs

logger = logging.getLogger("django_dataflows.runtime")

#: Seconds between two progress writes of one run; the latest value is written at the end.
PROGRESS_INTERVAL = 1.0


#: ``\u0000`` as ``json.dumps`` writes a NUL character (not an escaped backslash before it).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def json_value(value: Any, what: str) -> Any:
    """``value`` if it can be stored as JSON, else ``UnstorableValue`` naming ``what`` it is.

    Stricter than ``json.dumps``, as databases are: NaN and infinities are not JSON, and
    PostgreSQL refuses a NUL character in a JSON string.
    """
    try:
        dumped = json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False)
    except ValueError as exc:
        # Python's own wording varies between versions ("…compliant: nan" from 3.12 on).
        reason = (
            "it holds NaN or an infinite number, which JSON cannot represent"
            if "Out of range float" in str(exc)
            else str(exc)
        )
        raise UnstorableValue(f"{what} cannot be stored as JSON: {reason}") from exc
    except TypeError as exc:
        raise UnstorableValue(f"{what} cannot be stored as JSON: {exc}") from exc
    if _NUL_ESCAPE.search(dumped):
        raise UnstorableValue(
            f"{what} cannot be stored as JSON: a string in it holds a NUL character (\\x00)"
        )
    return value


def stored_json(value: Any, what: str) -> Any:
    """``value`` as it reads back once stored (dates become ISO strings), or ``UnstorableValue``."""
    return json.loads(json.dumps(json_value(value, what), cls=DjangoJSONEncoder))


class RunSession:
    """Records one execution of a run: steps, progress, checkpoints.

    ``declared`` are the flow's ``steps``. On a first start their rows are created
    ``pending`` (:meth:`create_declared_steps`); on a resume the stored rows are read
    (:meth:`load`), so steps that succeeded before the pause are skipped and their results
    are in :attr:`results`.
    """

    def __init__(self, run: DataFlowRun, declared: tuple[str, ...] = ()) -> None:
        self.run = run
        self.declared = declared
        self._results: dict[str, Any] = {}
        self._done: set[str] = set()
        #: position -> (name, status) of this run's step rows, as last written.
        self._rows: dict[int, tuple[str, str]] = {}
        #: position -> primary key of the row, where known (for the signal's step).
        self._pks: dict[int, int] = {}
        self._progress: dict[str, Any] | None = None
        self._progress_stored = True
        self._progress_written_at = float("-inf")
        #: The first declared step, created already in progress: its position.
        self._started_early: int | None = None
        #: More fields for the run's last write (the run's cost, set by ``runlogs``).
        self.outcome_fields: dict[str, Any] = {}

    # -- set-up -------------------------------------------------------------------------

    def create_declared_steps(self, *, start_first: bool = False) -> None:
        """Create a ``pending`` row for each declared step not stored yet (one INSERT).

        With ``start_first`` (a first start of a flow whose default ``run()`` begins with
        the first declared step at once) that step's row is created ``in_progress``: the
        run only just moved to ``in_progress`` in this transaction, so no cancel or pause
        can be waiting for the checkpoint before it, and the step's start costs no write
        of its own.
        """
        stored = {name for name, _status in self._rows.values()}
        missing = [name for name in self.declared if name not in stored]
        if not missing:
            return
        first = max(self._rows, default=0) + 1
        rows = [
            DataFlowRunStep(run_id=self.run.pk, position=position, name=name)
            for position, name in enumerate(missing, start=first)
        ]
        if start_first and not self._rows:
            rows[0].status, rows[0].started_at = StepStatus.IN_PROGRESS, Now()
            self._started_early = rows[0].position
        DataFlowRunStep.objects.bulk_create(rows)
        touch_runs([self.run.pk])
        for row in rows:
            self._rows[row.position] = (row.name, row.status)
            if row.pk is not None:  # where the database returns the new keys
                self._pks[row.position] = row.pk

    def load(self) -> None:
        """Read the run's stored steps (a resumed run): what is done, and its results."""
        for pk, position, name, status, result in DataFlowRunStep.objects.filter(
            run_id=self.run.pk
        ).values_list("pk", "position", "name", "status", "result"):
            self._rows[position] = (name, status)
            self._pks[position] = pk
            if status == StepStatus.SUCCESS:
                self._results[name] = result
                if name in self.declared:
                    self._done.add(name)

    @property
    def has_steps(self) -> bool:
        return bool(self._rows)

    # -- StepRecorder -------------------------------------------------------------------

    @property
    def results(self) -> dict[str, Any]:
        return self._results

    def completed(self, name: str) -> bool:
        return name in self._done

    def checkpoint(self) -> None:
        row = (
            DataFlowRun.objects.filter(pk=self.run.pk)
            .values_list("status", "cancel_requested_at", "pause_requested_at")
            .first()
        )
        if row is None or row[0] != RunStatus.IN_PROGRESS:
            # Timed out by the heartbeat (or deleted) meanwhile: another body may start, so
            # this one stops here.
            raise RunInterrupted(self.run.pk, "lost")
        _status, cancel_requested_at, pause_requested_at = row
        if cancel_requested_at is not None:
            raise RunInterrupted(self.run.pk, "cancel")
        if pause_requested_at is not None:
            raise RunInterrupted(self.run.pk, "pause")

    def progress(self, done: float, total: float | None, message: str) -> None:
        self._progress = {"done": done, "total": total, "message": message}
        self._progress_stored = False
        now = time.monotonic()
        if now - self._progress_written_at >= PROGRESS_INTERVAL:
            DataFlowRun.objects.filter(pk=self.run.pk).update(progress=self._progress)
            self.run.progress = self._progress
            self._progress_stored = True
            self._progress_written_at = now

    def begin_step(self, name: str) -> Step:
        position = self._reusable_row(name)
        early, self._started_early = self._started_early, None
        # The default run() begins with the first declared step, created in progress.
        if early is not None and early == position:
            return Step(name, position)
        if position is None:
            position = max(self._rows, default=0) + 1
            self._pks[position] = DataFlowRunStep.objects.create(
                run_id=self.run.pk,
                position=position,
                name=name,
                status=StepStatus.IN_PROGRESS,
                started_at=Now(),
            ).pk
        else:
            DataFlowRunStep.objects.filter(run_id=self.run.pk, position=position).update(
                status=StepStatus.IN_PROGRESS, started_at=Now(), ended_at=None, error_message=""
            )
        touch_runs([self.run.pk])
        self._rows[position] = (name, StepStatus.IN_PROGRESS)
        return Step(name, position)

    def end_step(self, step: Step, error: BaseException | None) -> None:
        if error is None:
            try:
                # As it reads back: the same in this run and in a resumed one.
                result = stored_json(step.result, f"The result of step {step.name!r}")
            except TypeError as exc:
                self._write_step_end(step, StepStatus.FAILED, error_message=str(exc))
                raise
            self._write_step_end(step, StepStatus.SUCCESS, result=result)
            self._results[step.name] = result
        elif isinstance(error, RunInterrupted) and error.action == "pause":
            # Paused inside the step: it starts again from its beginning on resume.
            self._reset_to_pending(step.position)
        elif isinstance(error, RunInterrupted):
            self._write_step_end(step, StepStatus.CANCELLED)
        else:
            self._write_step_end(
                step, StepStatus.FAILED, error_message=str(error) or type(error).__name__
            )

    # -- at the end of the run ----------------------------------------------------------

    def release_unstarted(self) -> None:
        """The run ends before its first step began: that step was never really started.

        Called while the run's end is being recorded: a failure here is logged, never
        raised, so it cannot hide the outcome.
        """
        early, self._started_early = self._started_early, None
        if early is None:
            return
        try:
            self._reset_to_pending(early)
        except Exception:
            logger.exception("Could not reset the first step of run %s", self.run.pk)

    def final_fields(self) -> dict[str, Any]:
        """Fields the run's last write carries: the latest progress, if not stored yet,
        and :attr:`outcome_fields`."""
        if self._progress_stored or self._progress is None:
            return dict(self.outcome_fields)
        return {**self.outcome_fields, "progress": self._progress}

    @property
    def current_step(self) -> str:
        """The name of the step in progress, or ``""`` between steps."""
        for name, status in self._rows.values():
            if status == StepStatus.IN_PROGRESS:
                return name
        return ""

    # -- helpers ------------------------------------------------------------------------

    def _reusable_row(self, name: str) -> int | None:
        """The stored row to run ``name`` in: a pending one (declared, or left by a pause)."""
        for position in sorted(self._rows):
            row_name, status = self._rows[position]
            if row_name == name and status in (StepStatus.PENDING, StepStatus.IN_PROGRESS):
                return position
        return None

    def _reset_to_pending(self, position: int) -> None:
        DataFlowRunStep.objects.filter(run_id=self.run.pk, position=position).update(
            status=StepStatus.PENDING, started_at=None
        )
        touch_runs([self.run.pk])
        self._rows[position] = (self._rows[position][0], StepStatus.PENDING)

    def _write_step_end(self, step: Step, status: str, **fields: Any) -> None:
        """End the step's row; the signal gets the row as stored, read back by the write."""
        returned = ("pk", "started_at", "ended_at", "duration_ms", "updated_at")
        [stored] = update_returning(
            DataFlowRunStep.objects.filter(run_id=self.run.pk, position=step.position),
            {"status": status, "ended_at": Now(), "updated_at": Now(), **fields},
            returned,
        )
        touch_runs([self.run.pk])
        self._rows[step.position] = (step.name, status)
        row = DataFlowRunStep(
            run_id=self.run.pk,
            position=step.position,
            name=step.name,
            status=status,
            result=fields.get("result"),
            error_message=fields.get("error_message", ""),
        )
        for name, value in stored.items():
            setattr(row, name, value)
        row._state.adding = False
        step.started_at = stored["started_at"]
        announce_runs_changed([self.run.pk], DataFlowRunStep.objects.db)
        emit("run_step_finished", self.run, step=row)
