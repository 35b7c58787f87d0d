"""The example project of django-dataflows: weather data flows on a real data file."""

from __future__ import annotations

import os

if os.environ.get("CELERY_BROKER_URL"):
    # As in Celery's Django guide: loading the app here makes it the default app, so the
    # tasks django-dataflows sends from the web process go to this app's broker.
    from example_project.celery import app as celery_app

    __all__ = ["celery_app"]
