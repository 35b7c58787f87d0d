"""Shared fixtures, and the rule that turns a missing service into a failure in CI.

Tests that need PostgreSQL are marked ``postgres``; they skip when the test database is
not PostgreSQL (run them with ``DATABASE_URL=postgres://…``). Tests marked ``redis`` skip
when the Redis server of ``CELERY_BROKER_URL`` does not answer. With
``DATAFLOWS_REQUIRE_SERVICES=1`` (set by ``.ci/run``) such a skip fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.db import connection

from django_dataflows.backends import get_backend, load_backend

REQUIRE_SERVICES = os.environ.get("DATAFLOWS_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when CI has declared that every service must be there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (DATAFLOWS_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(autouse=True)
def _require_postgres(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres") and connection.vendor != "postgresql":
        skip_or_fail("needs PostgreSQL: set DATABASE_URL=postgres://…")


@pytest.fixture(autouse=True)
def _require_redis(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("redis") is None:
        return
    url = settings.CELERY_BROKER_URL
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # ImportError, or any connection error
        skip_or_fail(f"needs Redis at {url}: {exc}")


@pytest.fixture(autouse=True)
def _fresh_backends() -> Iterator[None]:
    # Backends are cached per dotted path; give every test new instances.
    load_backend.cache_clear()
    yield
    load_backend.cache_clear()


@pytest.fixture
def dummy_backend(settings: pytest.FixtureRequest) -> object:
    settings.DATAFLOWS = {
        **settings.DATAFLOWS,
        "BACKEND": "django_dataflows.backends.dummy.DummyBackend",
    }
    return get_backend()
