"""What both benchmarks need first: Django set up on a PostgreSQL database of their own.

Import it before anything from Django: ``from common import ensure_database, say``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django


def say(message: str) -> None:
    print(message, flush=True)


def setup_django(default_database_url: str) -> None:
    """Set Django up on ``DATABASE_URL`` (else ``default_database_url``).

    As a tuned production worker runs, psycopg prepares a statement after its fifth run on
    a connection (``OPTIONS["prepare_threshold"]``); ``DATAFLOWS_TEST_PREPARE_THRESHOLD=``
    (empty) measures Django's default, which never prepares.
    """
    os.environ.setdefault("DATABASE_URL", default_database_url)
    os.environ.setdefault("DATAFLOWS_TEST_PREPARE_THRESHOLD", "5")
    django.setup()


def ensure_database() -> None:
    """Create the benchmark's database if it is missing, and migrate it."""
    from django.core.management import call_command
    from django.db import connection

    name = connection.settings_dict["NAME"]
    with connection._nodb_cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            say(f"Creating database {name}…")
            cursor.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)
