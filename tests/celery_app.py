"""The test suite's Celery app, set up as a host project's ``proj/celery.py`` would be.

The worker processes the tests start run ``celery -A tests.celery_app worker``; the task
``django_dataflows.run_data_flow`` is found by ``autodiscover_tasks()``, like in any project.
"""

from __future__ import annotations

import os
import uuid

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

#: A Redis key prefix of this test session, inherited by the workers it starts: two sessions
#: on the same Redis server (SQLite and PostgreSQL side by side) never take each other's
#: messages.
BROKER_KEY_PREFIX = os.environ.setdefault(
    "DATAFLOWS_TEST_BROKER_PREFIX", f"dataflows-tests-{uuid.uuid4().hex[:12]}:"
)

app = Celery("tests", include=["tests.async_tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "global_keyprefix": BROKER_KEY_PREFIX,
}
app.autodiscover_tasks()


@worker_process_init.connect
def _record_run_events(**kwargs: object) -> None:
    # In the worker processes of tests/test_celery.py (not the benchmark's): keep each run
    # signal the worker sends as a Record, so the tests see what instrumentation reports.
    if os.environ.get("DATAFLOWS_TEST_RECORD_EVENTS") != "1":
        return
    from django_dataflows import signals
    from tests.async_tasks import record_run_event

    for signal in (signals.run_started, signals.run_finished):
        signal.connect(record_run_event, dispatch_uid=f"tests-record-{id(signal)}")
