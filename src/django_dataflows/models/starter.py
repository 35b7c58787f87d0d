"""How the models reach the run engine without importing it (dependency inversion).

:mod:`django_dataflows.runs` sits above the models; the app plugs its starter in at start-up
(:func:`use_run_starter`), and ``DataFlow.trigger_run()`` and friends call through it."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from .backfills import Backfill
    from .flows import DataFlow
    from .runs import DataFlowRun


class RunStarter(Protocol):
    """What starts runs: the run engine (:mod:`django_dataflows.runs.starting`).

    It sits above the models (it needs the backends) and imports them; the models import
    nothing above them. The app's ``ready()`` plugs the engine in with
    :func:`use_run_starter` (dependency inversion: the model states what it needs).
    """

    def create_pending_run(
        self,
        data_flow: DataFlow,
        trigger: str = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        *,
        attempt: int = ...,
        now: datetime | None = ...,
        input: dict[str, Any] | None = ...,
    ) -> DataFlowRun: ...

    def trigger_run(
        self,
        data_flow: DataFlow,
        trigger: str = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        *,
        input: dict[str, Any] | None = ...,
        attempt: int = ...,
    ) -> DataFlowRun: ...

    def create_backfill(
        self,
        data_flow: DataFlow,
        start: datetime,
        end: datetime,
        *,
        rerun: bool = ...,
        user: AbstractBaseUser | AnonymousUser | None = ...,
        force: bool = ...,
    ) -> Backfill: ...


_run_starter: RunStarter | None = None


def use_run_starter(starter: RunStarter) -> None:
    """Start runs of ``DataFlow.trigger_run()`` and ``create_pending_run()`` with ``starter``."""
    global _run_starter
    _run_starter = starter


def _starter() -> RunStarter:
    if _run_starter is None:
        raise ImproperlyConfigured(
            "Runs can be started once the app registry is ready, with 'django_dataflows' "
            "in INSTALLED_APPS."
        )
    return _run_starter
