"""What a run logs and prints, kept with the run; what its body cost; its trace span.

:func:`observe_run` wraps a flow's body. Inside it, in the thread (or task) running the
flow and only there:

- every ``logging`` record at or above ``DATAFLOWS["RUN_LOG_LEVEL"]`` and every line
  written to ``sys.stdout`` become :class:`~django_dataflows.models.DataFlowRunLog` rows,
  written in batches (at most about once a second, and at the end), never one write per
  line, and none for a run that logs nothing;
- the thread's CPU time and the queries the body makes are counted, and handed to the
  run's last write (``RunSession.outcome_fields``).

Records are picked up by a log record factory rather than a handler: adding a handler to
the root logger would silence Python's last-resort handler for everything else in the
process. Which run a record belongs to is a context variable, so other threads and other
requests of the same process are never captured, and a thread pool's next task starts clean.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TextIO

from django.db import connection, connections, transaction
from django.db.models import Max
from django.utils import timezone

from django_dataflows.conf import app_settings
from django_dataflows.flows import FLOW_LOGGER
from django_dataflows.models import DataFlowRun, DataFlowRunLog
from django_dataflows.tracing import run_span

if TYPE_CHECKING:
    from django_dataflows.runs.runtime import RunSession

logger = logging.getLogger("django_dataflows.runlogs")

#: Seconds between two batches of log lines written while a run goes on.
FLUSH_INTERVAL = 1.0
#: The ``logger`` of lines printed to standard output.
STDOUT = "stdout"

_current: ContextVar[RunLog | None] = ContextVar("dataflows_run_log", default=None)


class RunLog:
    """The log lines of one run's body, kept in memory until they are written."""

    def __init__(self, run: DataFlowRun, session: RunSession | None = None) -> None:
        self.run = run
        self.session = session
        self.level = app_settings.RUN_LOG_LEVEL
        self.max_lines = app_settings.RUN_LOG_MAX_LINES
        self.max_bytes = app_settings.RUN_LOG_MAX_BYTES
        self.pending: list[DataFlowRunLog] = []
        self.lines = 0
        self.bytes = 0
        self.dropped = 0
        self.written = 0
        #: Writing lines: what the write itself logs or queries is not the run's.
        self.busy = False
        # A first start numbers its lines from 1; a resumed run (started before it was last
        # activated) reads where its earlier lines stopped, once.
        first_start = run.started_at is not None and run.started_at == run.activated_at
        self._next_position: int | None = 1 if first_start else None
        self._flushed_at = time.monotonic()
        self._partial = ""

    # -- what comes in --------------------------------------------------------------

    def add_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a '%' argument that does not format: keep what we can
            message = (
                f"{record.msg!r} (its arguments could not be formatted: "
                f"{type(exc).__name__}: {exc})"
            )
        if record.exc_info and record.exc_info[0] is not None:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            message += "\n" + record.stack_info
        self.add(record.levelname, record.name, message)

    def add_output(self, text: str) -> None:
        """Text written to standard output: one line per newline."""
        if self._full():
            self.dropped += text.count("\n")
            return
        self._partial += text
        if "\n" not in self._partial and len(self._partial) <= self.max_bytes:
            return
        *lines, self._partial = self._partial.split("\n")
        if len(self._partial) > self.max_bytes:  # a line that never ends
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self.add("INFO", STDOUT, line)

    def add(self, level: str, logger_name: str, message: str) -> None:
        """Keep one line, within the limits; past them, only count it."""
        if self._full():
            self.dropped += 1
            return
        room = self.max_bytes - self.bytes
        cut = len(message) > room
        if cut:  # at least one byte per character: cut before encoding 50 MB
            message = message[:room]
        data = message.encode("utf-8", "backslashreplace").replace(b"\x00", b"\\x00")
        if len(data) > room:
            data, cut = data[:room], True
        self.bytes += len(data)
        self.lines += 1
        text = data.decode("utf-8", "ignore")  # a character cut in half is left out
        if cut:
            text += " [cut: RUN_LOG_MAX_BYTES reached]"
        self.pending.append(
            DataFlowRunLog(
                run_id=self.run.pk,
                created_at=timezone.now(),
                level=level[:10],
                logger=logger_name[:200],
                message=text,
                step=self.session.current_step[:200] if self.session else "",
            )
        )
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL:
            self.flush(final=False)

    def _full(self) -> bool:
        return self.lines >= self.max_lines or self.bytes >= self.max_bytes

    # -- what goes out --------------------------------------------------------------

    def close(self) -> None:
        """The body ended: write what is left, and say how many lines were dropped."""
        if self._partial:
            partial, self._partial = self._partial, ""
            self.add("INFO", STDOUT, partial)
        if self.dropped:
            self.pending.append(
                DataFlowRunLog(
                    run_id=self.run.pk,
                    created_at=timezone.now(),
                    level="WARNING",
                    logger="django_dataflows.runlogs",
                    message=(
                        f"{self.dropped} more line{'s' if self.dropped != 1 else ''} dropped: "
                        f"the run's log is limited to {self.max_lines} lines and "
                        f"{self.max_bytes} bytes (RUN_LOG_MAX_LINES, RUN_LOG_MAX_BYTES)."
                    ),
                )
            )
        self.flush(final=True)

    def flush(self, *, final: bool) -> None:
        """Write the pending lines in one statement (per batch of 1,000).

        While the run goes on, only outside the flow's own transactions (the lines must not
        share their fate); at the end, in a savepoint if the caller holds a transaction. A
        failed write is logged and the lines are given up: the run's outcome matters more.
        """
        self._flushed_at = time.monotonic()
        if not self.pending or (not final and connection.in_atomic_block):
            return
        lines, self.pending = self.pending, []
        self.busy = True
        try:
            with transaction.atomic():
                if self._next_position is None:
                    last = DataFlowRunLog.objects.filter(run_id=self.run.pk).aggregate(
                        last=Max("position")
                    )["last"]
                    self._next_position = (last or 0) + 1
                for line in lines:
                    line.position, self._next_position = (
                        self._next_position,
                        self._next_position + 1,
                    )
                DataFlowRunLog.objects.bulk_create(lines, batch_size=1000)
                if not final:
                    # Live streams follow runs by updated_at: they then read the new lines.
                    # (The run's last write stamps it after the final batch.)
                    DataFlowRun.objects.filter(pk=self.run.pk).update()
            self.written += len(lines)
        except Exception:
            self._next_position = None  # read it again next time
            logger.exception("Could not store %s log lines of run %s", len(lines), self.run.pk)
        finally:
            self.busy = False


# -- where lines come from: log records and standard output ---------------------------

_install_lock = threading.Lock()
_previous_factory: Callable[..., logging.LogRecord] | None = None


def _capturing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    record = _previous_factory(*args, **kwargs)
    run_log = _current.get()
    if (
        run_log is not None
        and not run_log.busy
        and record.levelno >= run_log.level
        and not getattr(record, "_dataflows_kept", False)  # ours twice in a chain
    ):
        record._dataflows_kept = True
        run_log.add_record(record)
    return record


#: The level this module gave the flows' logger (a level set by the project is kept).
_flows_level: int | None = None


@lru_cache(maxsize=1)
def _flows_logger() -> logging.Logger:
    # logging keeps a logger for the life of the process: looked up once, not per run.
    return logging.getLogger(FLOW_LOGGER)


def _install_record_factory() -> None:
    """Chain our factory in front of the current one; give the flows' logger its level.

    Checked at every run, cheaply: logging may have been configured again since (a test's
    ``caplog``, a project's own ``dictConfig``).
    """
    global _previous_factory, _flows_level
    if logging.getLogRecordFactory() is not _capturing_factory:
        with _install_lock:
            current = logging.getLogRecordFactory()
            if current is not _capturing_factory:
                _previous_factory = current
                logging.setLogRecordFactory(_capturing_factory)
    # A flow's own logger would otherwise inherit the root's WARNING, and its INFO lines
    # would never be made.
    flows_logger = _flows_logger()
    wanted = app_settings.RUN_LOG_LEVEL
    if flows_logger.level in (logging.NOTSET, _flows_level) and flows_logger.level != wanted:
        flows_logger.setLevel(wanted)
        _flows_level = wanted


class _TeeStream:
    """``sys.stdout`` while runs go on: writes pass through, and the running flow's are kept."""

    def __init__(self, target: TextIO) -> None:
        self._target = target

    def write(self, text: str) -> int:
        run_log = _current.get()
        if run_log is None or run_log.busy:
            return self._target.write(text)
        if isinstance(text, str):
            run_log.add_output(text)
        # What the stream below does with the text is not the flow's: Celery's worker, for
        # one, turns printed lines into log records, which would be kept twice.
        run_log.busy = True
        try:
            return self._target.write(text)
        finally:
            run_log.busy = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class _StdoutTee:
    """Puts :class:`_TeeStream` in place while at least one run is observed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._original: TextIO | None = None
        self._tee: _TeeStream | None = None

    def enter(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._original = sys.stdout
                self._tee = _TeeStream(sys.stdout)
                sys.stdout = self._tee

    def exit(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users:
                return
            # Put back what was there, also when a flow replaced sys.stdout and left it:
            # the rest of the process keeps its output.
            if self._original is not None:
                sys.stdout = self._original
            self._original = self._tee = None


_stdout = _StdoutTee()


class _QueryCounter:
    """A ``connection.execute_wrapper`` counting the queries of the body."""

    def __init__(self, run_log: RunLog) -> None:
        self.run_log = run_log
        self.count = 0

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if not self.run_log.busy:
            self.count += 1
        return execute(sql, params, many, context)


@contextmanager
def observe_run(run: DataFlowRun, session: RunSession | None = None) -> Iterator[RunLog]:
    """Keep what the body logs and prints as the run's log; measure what the body costs.

    On the way out, the lines left are written, and ``cpu_time_ms`` and ``db_queries`` are
    put in ``session.outcome_fields`` for the run's last write. Nothing here is ever what
    makes a run fail: a log write that fails is logged and given up.
    """
    _install_record_factory()
    run_log = RunLog(run, session)
    counter = _QueryCounter(run_log)
    token = _current.set(run_log)
    _stdout.enter()
    started = time.thread_time()
    # Each connection's wrappers are a list: the counter goes on and comes off in place.
    wrapped = [connections[alias].execute_wrappers for alias in connections]
    try:
        with run_span(run):
            for wrappers in wrapped:
                wrappers.append(counter)
            try:
                yield run_log
            finally:
                for wrappers in wrapped:
                    wrappers.remove(counter)
    finally:
        cpu_time_ms = round((time.thread_time() - started) * 1000)
        _current.reset(token)
        _stdout.exit()
        try:
            run_log.close()
        except Exception:  # never hide the run's own outcome
            logger.exception("Could not store the log of run %s", run.pk)
        if session is not None:
            session.outcome_fields.update(cpu_time_ms=cpu_time_ms, db_queries=counter.count)
        run.cpu_time_ms, run.db_queries = cpu_time_ms, counter.count


#: The most lines :func:`log_lines` reads at once.
LOG_PAGE_SIZE = 1000


def log_lines(run_id: int, after: int = 0, limit: int = LOG_PAGE_SIZE) -> list[DataFlowRunLog]:
    """A run's log lines after position ``after``, in order, at most ``limit``."""
    return list(
        DataFlowRunLog.objects.filter(run_id=run_id, position__gt=after).order_by("position")[
            :limit
        ]
    )
