"""Settings of the example project.

Out of the box: SQLite in ``example_project/var/`` and the in-process backend, nothing to
install or start. Environment variables switch to the real thing:

``DATABASE_URL``
    e.g. ``postgres://user@127.0.0.1:5432/dataflows_example`` (needs ``dj-database-url``
    and ``psycopg``).
``CELERY_BROKER_URL``
    e.g. ``redis://127.0.0.1:6379/0``: runs are sent to Celery workers
    (``celery -A example_project worker``) instead of running in the web process.
``DATAFLOWS_HEARTBEAT_TOKEN``
    a shared secret the heartbeat then requires from every caller.
``EXAMPLE_SQLITE_PATH``
    another SQLite file (the tests use a temporary one).
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import django
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent

# Fine for a demo on 127.0.0.1; a deployment sets DJANGO_SECRET_KEY and DJANGO_DEBUG=0.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-project-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dataflows",
    "example_project.weather",
]

# The REST API and its live-status streams, with the "api" extra (make demo installs it):
# /dataflows/api/ and the admin's live pages.
API_APPS = ["rest_framework", "rest_framework.authtoken", "django_filters", "drf_spectacular"]
if all(find_spec(app.split(".")[0]) is not None for app in API_APPS):
    INSTALLED_APPS += API_APPS

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL")
    if url:
        try:
            import dj_database_url
        except ImportError as exc:
            raise ImproperlyConfigured(
                "DATABASE_URL is set but dj-database-url is not installed: "
                'pip install dj-database-url "psycopg[binary]"'
            ) from exc
        return dict(dj_database_url.parse(url, conn_max_age=60))
    path = Path(os.environ.get("EXAMPLE_SQLITE_PATH") or BASE_DIR / "var" / "example.sqlite3")
    # SQLite creates the file but not its directory; var/ is not in git.
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # The demo's web server, its heartbeat thread and a manage.py in another
            # terminal all write to this file: wait for the lock instead of failing, and
            # let readers (the admin) read while a flow writes.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

DATAFLOWS: dict[str, Any] = {
    "HEARTBEAT_TOKEN": os.environ.get("DATAFLOWS_HEARTBEAT_TOKEN") or None,
    # Failure, overdue and recovery alerts go here unless a flow lists its own addresses.
    "ALERT_EMAILS": ["data-team@example.com"],
}
# The demo writes alert e-mails to files in var/mail/ instead of sending them (the console
# backend would mix them into the JSON that dataflows_heartbeat prints). Django 6.1
# configures e-mail with MAILERS; its EMAIL_* settings are deprecated.
MAIL_DIR = os.environ.get("EXAMPLE_MAIL_DIR") or str(BASE_DIR / "var" / "mail")
if django.VERSION >= (6, 1):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "OPTIONS": {"file_path": MAIL_DIR},
        }
    }
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = MAIL_DIR
DEFAULT_FROM_EMAIL = "dataflows@example.com"

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL")
if CELERY_BROKER_URL:
    # Runs go to Celery workers; the task is django_dataflows.tasks, found by the
    # autodiscover_tasks() of example_project/celery.py. See docs/backends/celery.md.
    DATAFLOWS["BACKEND"] = "django_dataflows.backends.celery.CeleryBackend"
    # Fail fast, rather than hold up a heartbeat, when the broker is down or hangs.
    CELERY_BROKER_CONNECTION_TIMEOUT = 2
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 5}
    # A worker keeps its database connection for 1,000 tasks instead of opening one per
    # run (dataflows.W101; see "Database connections" in docs/backends/celery.md).
    CELERY_DB_REUSE_MAX = 1000

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_dataflows": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}
