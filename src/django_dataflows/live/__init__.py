"""Live status over Server-Sent Events, and the event sources behind it.

``DATAFLOWS["EVENTS"]`` names the source (:mod:`~django_dataflows.live.polling` by
default, :mod:`~django_dataflows.live.postgres` or :mod:`~django_dataflows.live.redis`);
:func:`get_event_source` returns this process's one instance of it.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_dataflows.conf import app_settings
from django_dataflows.live.base import EventSource

_sources: dict[str, EventSource] = {}
_lock = threading.Lock()


def load_event_source_class(path: str) -> type[EventSource]:
    """The event source class at ``path`` (a dotted path from settings)."""
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"Could not import DATAFLOWS['EVENTS'] {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, EventSource)):
        raise ImproperlyConfigured(
            f"DATAFLOWS['EVENTS'] {path!r} is not a subclass of "
            "django_dataflows.live.base.EventSource."
        )
    return cls


def get_event_source() -> EventSource:
    """This process's instance of the configured event source (one per dotted path)."""
    path = app_settings.EVENTS
    with _lock:
        source = _sources.get(path)
        if source is None:
            source = _sources[path] = load_event_source_class(path)()
        return source


def publish_runs_changed(sender: Any, run_ids: list[int], **kwargs: Any) -> None:
    """Receiver of ``runs_changed``: hand the ids to a source that publishes them."""
    source = get_event_source()
    if source.publishes:
        source.publish(run_ids)
