"""The WSGI application the fault tests serve with gunicorn (``tests.wsgi:application``).

It loads the test suite's Celery app, as a host project's ``proj/__init__.py`` does. With
``DATAFLOWS_TEST_CLOCK_SHIFT`` (seconds) this process's clock, as Django reads it
(``django.utils.timezone.now``), runs that far ahead (or behind, if negative): an app
server whose clock is wrong. With ``DATAFLOWS_TEST_PUBLISH_FAULT`` it breaks the broker at
a chosen publish (see ``tests.faults.inject_publish_fault``).
"""

from __future__ import annotations

import datetime
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.wsgi import get_wsgi_application
from django.utils import timezone

import tests.celery_app  # noqa: F401 - the project's Celery app, as in proj/__init__.py

_shift = float(os.environ.get("DATAFLOWS_TEST_CLOCK_SHIFT", "0"))
if _shift:
    _real_now = timezone.now
    _offset = datetime.timedelta(seconds=_shift)

    def _shifted_now() -> datetime.datetime:
        return _real_now() + _offset

    timezone.now = _shifted_now

if os.environ.get("DATAFLOWS_TEST_PUBLISH_FAULT"):
    from celery.signals import before_task_publish

    from tests.faults import inject_publish_fault

    before_task_publish.connect(inject_publish_fault, weak=False)

application = get_wsgi_application()
