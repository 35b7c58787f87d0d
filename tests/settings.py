"""Settings for the test suite: SQLite by default, any database through DATABASE_URL."""

from __future__ import annotations

import json
import os

import dj_database_url
import django

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dataflows",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "sqlite:///:memory:"), conn_max_age=0
    )
}
if os.environ.get("DATAFLOWS_TEST_PREPARE_THRESHOLD"):
    # psycopg prepares a statement after this many runs on a connection (Django's default:
    # never). The benchmarks set it, as a tuned worker would; see the Celery backend page.
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = int(
        os.environ["DATAFLOWS_TEST_PREPARE_THRESHOLD"]
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not memory) so that other processes in the tests (the real servers of
    # tests/test_live_servers.py) can share the database; one per test session.
    import tempfile

    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("SQLITE_TEST_NAME")
        or os.path.join(tempfile.gettempdir(), f"dataflows-tests-{os.getpid()}.sqlite3")
    }

STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DATAFLOWS: dict[str, object] = {}

if django.VERSION >= (6, 1):
    # E-mail is configured with MAILERS from Django 6.1 (the EMAIL_* settings are
    # deprecated); the test runner swaps every mailer for the in-memory backend.
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
# The server and worker processes of the fault tests (tests/faults.py) get their settings
# from the environment: a JSON object merged into DATAFLOWS.
if os.environ.get("DATAFLOWS_TEST_SETTINGS"):
    DATAFLOWS.update(json.loads(os.environ["DATAFLOWS_TEST_SETTINGS"]))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_dataflows": {"handlers": ["null"], "propagate": True}},
}
if os.environ.get("DATAFLOWS_TEST_LOG") == "1":
    # A fault test's server process logs to its log file, which the test reads.
    LOGGING["handlers"] = {"stderr": {"class": "logging.StreamHandler"}}
    LOGGING["loggers"] = {"django_dataflows": {"handlers": ["stderr"], "level": "INFO"}}

# --- Asynchronous backends (tests/test_celery.py, tests/test_django_tasks.py, bench/) ---------
# Celery reads these through tests/celery_app.py (namespace "CELERY"), as a host project's
# app would. Redis database 5 keeps the tests' queues apart; tests/celery_app.py also gives
# every test session its own key prefix. Short connection timeouts make a dead broker fail
# an enqueue at once.
CELERY_BROKER_URL = os.environ.get("DATAFLOWS_TEST_BROKER_URL", "redis://127.0.0.1:6379/5")
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": 2,
    # A frozen broker (tests/test_faults.py) answers nothing: this bounds each publish.
    "socket_timeout": float(os.environ.get("DATAFLOWS_TEST_BROKER_SOCKET_TIMEOUT", "5")),
}

# The worker processes the tests start (tests/async_workers.py) read these from the environment.
if os.environ.get("DATAFLOWS_TEST_RETRY_BACKOFF"):
    DATAFLOWS["RETRY_BACKOFF"] = float(os.environ["DATAFLOWS_TEST_RETRY_BACKOFF"])
# Celery's Django fix-up closes the database connection around every task unless told to
# reuse it for this many tasks (dataflows.W101); bench/celery_throughput.py sets 0 to
# measure Celery's default.
CELERY_DB_REUSE_MAX = int(os.environ.get("DATAFLOWS_TEST_CELERY_DB_REUSE_MAX", "1000"))

# Django's Tasks framework with the django-tasks-db database backend, when installed (the
# "tasks" extra): django.tasks on Django 6+, the django-tasks backport on Django 5.2.
from importlib.util import find_spec  # noqa: E402

if find_spec("django_tasks_db") is not None:
    if find_spec("django.tasks") is None:
        INSTALLED_APPS.append("django_tasks")
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {
        "default": {
            "BACKEND": "django_tasks_db.DatabaseBackend",
            "QUEUES": ["default", "reports", "parked"],
        }
    }

# The real servers of tests/test_live_servers.py read short intervals from the environment.
if os.environ.get("DATAFLOWS_TEST_SSE_KEEPALIVE"):
    DATAFLOWS["SSE_KEEPALIVE"] = float(os.environ["DATAFLOWS_TEST_SSE_KEEPALIVE"])
if os.environ.get("DATAFLOWS_TEST_SSE_POLL_INTERVAL"):
    DATAFLOWS["SSE_POLL_INTERVAL"] = float(os.environ["DATAFLOWS_TEST_SSE_POLL_INTERVAL"])
if os.environ.get("DATAFLOWS_TEST_EVENTS"):
    DATAFLOWS["EVENTS"] = os.environ["DATAFLOWS_TEST_EVENTS"]
if os.environ.get("DATAFLOWS_TEST_EVENTS_REDIS_URL"):
    DATAFLOWS["EVENTS_REDIS_URL"] = os.environ["DATAFLOWS_TEST_EVENTS_REDIS_URL"]
# The REST API (the "api" extra): session and token authentication, as a host project
# would configure them.
if find_spec("rest_framework") is not None:
    INSTALLED_APPS += ["rest_framework", "rest_framework.authtoken", "django_filters"]
    INSTALLED_APPS += ["drf_spectacular"]
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            # Token first: an anonymous request is then challenged (401, WWW-Authenticate).
            "rest_framework.authentication.TokenAuthentication",
            "rest_framework.authentication.SessionAuthentication",
        ],
    }

# Worker processes of tests/test_tracing.py write their spans to a file.
if os.environ.get("DATAFLOWS_TEST_TRACE_FILE"):
    from tests.tracing import install_file_exporter

    install_file_exporter(os.environ["DATAFLOWS_TEST_TRACE_FILE"])
