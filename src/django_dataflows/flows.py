"""The :class:`Flow` base class, the registry of flow classes, and their discovery.

Only classes in the registry can ever be resolved from a ``DataFlow.flow`` path: the
path stored in the database is a key into this registry, never something to import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar

from django.utils.module_loading import autodiscover_modules

from django_dataflows.exceptions import FlowNotRegistered

if TYPE_CHECKING:
    from django_dataflows.models import DataFlow, DataFlowRun

logger = logging.getLogger(__name__)

_registry: dict[str, type[Flow]] = {}


@dataclass(frozen=True)
class FlowContext:
    """What a running flow knows about where it runs."""

    data_flow: DataFlow
    run: DataFlowRun

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "abstract" not in cls.__dict__:
            cls.abstract = False
        if not cls.abstract:
            register(cls)

    def __init__(
        self, configuration: dict[str, Any] | None = None, *, context: FlowContext | None = None
    ) -> None:
        self.configuration: dict[str, Any] = dict(configuration or {})
        self.context = context

    def run(self) -> Any:
        """Do the work; return a JSON-serialisable result (stored on the run)."""
        raise NotImplementedError(f"{type(self).__name__} must implement run().")

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
