"""Schedule and run data flows in Django."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Flow", "FlowContext", "FlowExecutor", "PermanentFlowError", "__version__"]

if TYPE_CHECKING:
    from django_dataflows.exceptions import PermanentFlowError
    from django_dataflows.executor import FlowExecutor
    from django_dataflows.flows import Flow, FlowContext


def __getattr__(name: str) -> Any:
    # ``from django_dataflows import Flow`` must work in a project's flows module, but
    # importing the package (as Django does for INSTALLED_APPS) must not import models
    # before the app registry is ready, so the names are resolved lazily.
    if name in ("Flow", "FlowContext"):
        from django_dataflows import flows

        return getattr(flows, name)
    if name == "FlowExecutor":
        from django_dataflows.executor import FlowExecutor

        return FlowExecutor
    if name == "PermanentFlowError":
        from django_dataflows.exceptions import PermanentFlowError

        return PermanentFlowError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
