"""Execution backends: where a triggered run is executed.

``DATAFLOWS["BACKEND"]`` names the backend class by dotted path (a setting, so trusted).
Runs are handed to it by :mod:`django_dataflows.runs.starting`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

from django_dataflows.conf import app_settings
from django_dataflows.exceptions import DataFlowsImproperlyConfigured

if TYPE_CHECKING:
    from django_dataflows.backends.base import BaseBackend


@lru_cache(maxsize=8)
def load_backend(path: str) -> BaseBackend:
    """Instantiate the backend class at ``path``; ``ImproperlyConfigured`` if it is wrong."""
    from django_dataflows.backends.base import BaseBackend

    try:
        backend_class = import_string(path)
    except ImportError as exc:
        raise DataFlowsImproperlyConfigured(
            f"Could not import DATAFLOWS['BACKEND'] {path!r}: {exc}"
        ) from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, BaseBackend)):
        raise DataFlowsImproperlyConfigured(
            f"DATAFLOWS['BACKEND'] {path!r} is not a subclass of "
            "django_dataflows.backends.base.BaseBackend."
        )
    return backend_class()


def get_backend() -> BaseBackend:
    """The configured backend (one instance per dotted path)."""
    return load_backend(app_settings.BACKEND)
