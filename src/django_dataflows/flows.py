"""The :class:`Flow` base class, the registry of flow classes, and their discovery.

Only classes in the registry can ever be resolved from a ``DataFlow.flow`` path: the
path stored in the database is a key into this registry, never something to import.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import autodiscover_modules

from django_dataflows.exceptions import FlowNotRegistered
from django_dataflows.tracing import step_span

if TYPE_CHECKING:
    from django_dataflows.models import DataFlow, DataFlowRun

logger = logging.getLogger(__name__)
#: The parent of every flow's own logger.
FLOW_LOGGER = "django_dataflows.flow"

_registry: dict[str, type[Flow]] = {}


class Step:
    """One step while it runs: what ``with self.step("name") as step:`` gives.

    Set ``step.result`` to a JSON-serialisable value to store it on the step (and to hand
    it on to later steps through ``self.results[name]``).
    """

    def __init__(self, name: str, position: int = 0) -> None:
        self.name = name
        self.position = position
        self.result: Any = None
        self.started_at: datetime | None = None


class StepRecorder(Protocol):
    """Where a flow's steps, progress and checkpoints go.

    The executor gives a running flow one that writes to the database
    (:class:`django_dataflows.runs.runtime.RunSession`); a flow built without one (in a unit
    test, say) records them in memory (:class:`MemoryRecorder`).
    """

    @property
    def results(self) -> dict[str, Any]:
        """Results of the steps that succeeded so far, by name."""

    def completed(self, name: str) -> bool:
        """Has the declared step ``name`` already succeeded (in an earlier, paused part)?"""

    def checkpoint(self) -> None:
        """Raise ``RunInterrupted`` if the run has been asked to cancel or pause."""

    def progress(self, done: float, total: float | None, message: str) -> None:
        """Note the run's progress (the recorder decides how often to store it)."""

    def begin_step(self, name: str) -> Step:
        """Record that the step ``name`` starts."""

    def end_step(self, step: Step, error: BaseException | None) -> None:
        """Record that ``step`` ended: with ``error``, or successfully with ``step.result``."""


class MemoryRecorder:
    """A :class:`StepRecorder` that keeps everything in memory: no database, no checkpoints."""

    def __init__(self) -> None:
        self._results: dict[str, Any] = {}
        self.steps: list[tuple[str, str]] = []
        self.latest_progress: dict[str, Any] = {}

    @property
    def results(self) -> dict[str, Any]:
        return self._results

    def completed(self, name: str) -> bool:
        return False

    def checkpoint(self) -> None:
        return None

    def progress(self, done: float, total: float | None, message: str) -> None:
        self.latest_progress = {"done": done, "total": total, "message": message}

    def begin_step(self, name: str) -> Step:
        return Step(name, position=len(self.steps) + 1)

    def end_step(self, step: Step, error: BaseException | None) -> None:
        if error is None:
            # As the executor stores it: a unit test sees what a resumed run would read.
            self._results[step.name] = json.loads(json.dumps(step.result, cls=DjangoJSONEncoder))
        self.steps.append((step.name, "success" if error is None else "failed"))


@dataclass(frozen=True)
class FlowContext:
    """What a running flow knows about where it runs.

    ``recorder`` is where steps, progress and checkpoints go; the executor sets it.
    """

    data_flow: DataFlow
    run: DataFlowRun
    recorder: StepRecorder | None = None

    @property
    def attempt(self) -> int:
        return self.run.attempt


class Flow:
    """Base class of data flows.

    Subclass it in ``yourapp/flows.py`` and implement :meth:`run`::

        class ProductSync(Flow):
            \"\"\"Copy changed products into the export table.\"\"\"

            def run(self):
                batch = self.configuration.get("batch_size", 500)
                ...
                return {"copied": 42}

    Every concrete subclass is registered under its dotted path
    (``"yourapp.flows.ProductSync"``), which is what a ``DataFlow`` row names. Set
    ``abstract = True`` on a base class that should not be registered itself.
    """

    abstract: ClassVar[bool] = True
    #: A human name for choice lists; defaults to the class name.
    verbose_name: ClassVar[str] = ""
    #: A JSON Schema the DataFlow's configuration must match (``None``: any JSON object).
    configuration_schema: ClassVar[dict[str, Any] | None] = None
    #: Names of methods the default :meth:`run` calls in order, each recorded as a step.
    steps: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if not cls.abstract:
            register(cls)

    def __init__(
        self,
        configuration: dict[str, Any] | None = None,
        *,
        context: FlowContext | None = None,
        input: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.configuration: dict[str, Any] = dict(configuration or {})
        self.context = context
        if input is None and context is not None:
            input = context.run.input
        if state is None and context is not None:
            state = context.data_flow.state
        #: The run's own parameters (a JSON object; empty for scheduled runs).
        self.input: dict[str, Any] = copy.deepcopy(dict(input or {}))
        #: A JSON object kept on the DataFlow between runs; saved only if the run succeeds.
        self.state: dict[str, Any] = copy.deepcopy(dict(state or {}))
        recorder = context.recorder if context is not None else None
        self._recorder: StepRecorder = recorder if recorder is not None else MemoryRecorder()

    def run(self) -> Any:
        """Do the work; return a JSON-serialisable result (stored on the run).

        The default runs the methods named in :attr:`steps` in order, each as a step, with
        a checkpoint before each, skipping those that already succeeded before a pause; it
        returns ``{step name: step result}``.
        """
        if not self.steps:
            raise NotImplementedError(f"{type(self).__name__} must implement run() or set steps.")
        for name in self.steps:
            if self._recorder.completed(name):
                continue
            with self.step(name) as step:
                step.result = getattr(self, name)()
        return {name: self.results.get(name) for name in self.steps}

    @property
    def logger(self) -> logging.Logger:
        """The flow's logger, ``django_dataflows.flow.<data flow name>``.

        What it logs at or above ``DATAFLOWS["RUN_LOG_LEVEL"]`` is kept with the run, as is
        what any other logger or ``print()`` emits in the code running the flow.
        """
        name = self.context.data_flow.name if self.context else type(self).__name__
        return logging.getLogger(f"{FLOW_LOGGER}.{name}")

    @property
    def slot(self) -> datetime | None:
        """The schedule slot this run is for (``scheduled_for``): the end of its data
        interval. The same for scheduled, caught-up and backfilled runs; ``None`` for a run
        outside the schedule (started by hand, or by upstream flows)."""
        return self.context.run.scheduled_for if self.context is not None else None

    @property
    def previous_slot(self) -> datetime | None:
        """The slot before :attr:`slot`: the start of the data interval
        ``[previous_slot, slot)``; ``None`` when :attr:`slot` is."""
        return self.context.run.previous_slot if self.context is not None else None

    @property
    def upstream_results(self) -> dict[str, Any]:
        """``{flow name: result}`` of the upstream runs whose success started this run
        (empty for a run its upstream flows did not start)."""
        return self.context.run.upstream_results if self.context is not None else {}

    @property
    def results(self) -> dict[str, Any]:
        """The results of the steps that succeeded so far, by step name.

        In a resumed run this includes the steps that ran before the pause, in whatever
        process ran them: they are read from the stored step results.
        """
        return self._recorder.results

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Record the block as the step ``name``; set ``step.result`` to store a result.

        A checkpoint comes first. An exception in the block marks the step ``failed`` (and
        propagates); a cancel or pause request reached inside it marks the step
        ``cancelled``, or ``pending`` again for a pause. ``with self.step()`` blocks are
        run again on resume; only the methods in :attr:`steps` are skipped once done.
        """
        self.checkpoint()
        with step_span(name):
            step = self._recorder.begin_step(name)
            try:
                yield step
            except BaseException as exc:
                self._recorder.end_step(step, exc)
                raise
            self._recorder.end_step(step, None)

    def checkpoint(self) -> None:
        """Stop here if the run has been asked to cancel or pause.

        Call it between units of work in long loops. It raises
        :class:`~django_dataflows.exceptions.RunInterrupted` (a ``BaseException``: do not
        catch it); the executor records the run as
        ``cancelled`` or ``paused``. Between steps it is called for you.
        """
        self._recorder.checkpoint()

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress: ``done`` of ``total`` units (``total`` may be unknown).

        Stored on the run at most about once a second (the latest value is always stored
        when the run ends), so it is cheap to call in a loop.
        """
        for label, value in (("done", done), ("total", total)):
            if value is None and label == "total":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(
                    f"progress(): {label} must be a number of 0 or more, not {value!r}."
                )
        if not isinstance(message, str):
            raise ValueError(f"progress(): message must be a string, not {message!r}.")
        self._recorder.progress(done, total, message)

    @classmethod
    def flow_path(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def describe(cls) -> str:
        """The first paragraph of the docstring, for choice lists and help text."""
        doc = (cls.__doc__ or "").strip()
        return doc.split("\n\n", 1)[0].replace("\n", " ") if doc else ""


def register(flow_class: type[Flow]) -> type[Flow]:
    """Register ``flow_class`` under its dotted path (done for every concrete subclass)."""
    if not (isinstance(flow_class, type) and issubclass(flow_class, Flow)):
        raise TypeError(f"{flow_class!r} is not a subclass of django_dataflows.Flow.")
    _registry[flow_class.flow_path()] = flow_class
    return flow_class


def get_flow_class(path: str) -> type[Flow]:
    """Return the registered flow class for ``path`` or raise :class:`FlowNotRegistered`."""
    try:
        return _registry[path]
    except KeyError:
        raise FlowNotRegistered(path) from None


def is_registered(path: str) -> bool:
    return path in _registry


def registered_flows() -> dict[str, type[Flow]]:
    """A copy of the registry, sorted by path."""
    return dict(sorted(_registry.items()))


def autodiscover(extra_modules: list[str]) -> list[tuple[str, Exception]]:
    """Import every installed app's ``flows`` module, then ``extra_modules``.

    An error in an app's own flows module propagates (as with ``admin.py``); a module
    named in settings that cannot be imported is returned, for the system checks to
    report, instead of stopping start-up.
    """
    autodiscover_modules("flows")
    failures: list[tuple[str, Exception]] = []
    for module in extra_modules:
        try:
            import_module(module)
        except ImportError as exc:
            logger.error("Could not import flow module %r: %s", module, exc)
            failures.append((module, exc))
    return failures
