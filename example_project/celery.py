"""The example project's Celery app, used when ``CELERY_BROKER_URL`` is set.

Start a worker from the repository root::

    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    PYTHONPATH=. .venv/bin/celery -A example_project worker --loglevel=INFO

``autodiscover_tasks()`` finds django-dataflows' task in ``django_dataflows.tasks``, as it
finds the ``tasks`` module of every installed app.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
