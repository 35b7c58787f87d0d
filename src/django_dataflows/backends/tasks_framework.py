"""Which Tasks framework is installed: shared by the Django Tasks backend and its task module."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

#: The Tasks backend (an alias of ``settings.TASKS``) that stores and runs the runs.
TASK_BACKEND_ALIAS = "default"


def tasks_framework() -> ModuleType:
    """``django.tasks`` (Django 6+), else the ``django_tasks`` backport; ``ImportError`` if neither.

    The same preference as ``django-tasks-db``'s, so our task and its backend always come
    from the same framework.
    """
    try:
        return import_module("django.tasks")
    except ImportError:
        return import_module("django_tasks")
