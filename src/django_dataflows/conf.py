"""The ``DATAFLOWS`` setting, read live on every access so ``override_settings`` works."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    "BACKEND": "django_dataflows.backends.sync.SyncBackend",
    "HEARTBEAT_TOKEN": None,
    "HEARTBEAT_ALLOWED_IPS": [],
    "HEARTBEAT_TRUSTED_PROXIES": [],
    "HEARTBEAT_BATCH_SIZE": 500,
    "HEARTBEAT_MAX_BODY_SIZE": 4096,
    "DEFAULT_QUEUE": "default",
    "ALLOWED_QUEUES": None,
    "MAX_RETRIES": 3,
    "RETRY_BACKOFF": 2,
    "RUN_TIMEOUT": 3600,
    "PICKUP_TIMEOUT": 300,
    "MAX_REDELIVERIES": 3,
    "CALLBACKS": [],
    "FLOW_MODULES": [],
    "EVENTS": "django_dataflows.live.polling.PollingEvents",
    "EVENTS_REDIS_URL": "redis://127.0.0.1:6379/0",
    "SSE_KEEPALIVE": 15,
    "SSE_POLL_INTERVAL": 0.5,
    "SSE_WSGI_MAX_SECONDS": 30,
    "SSE_WSGI_MAX_STREAMS": 4,
    "SSE_DB_CONNECTIONS": 4,
    "SSE_DB_WAIT": 30,
    "ALERT_EMAILS": [],
    "MAX_INPUT_BYTES": 262_144,
    "MAX_CONFIGURATION_BYTES": 262_144,
    "MAX_JSON_DEPTH": 32,
    "SUMMARY_FIELD_BYTES": 4096,
    "SSE_CLIENT_QUEUE": 100,
    "SSE_REPLAY_MAX_EVENTS": 500,
    "SSE_REPLAY_MAX_BYTES": 1_000_000,
    "RUN_LOG_LEVEL": "INFO",
    "RUN_LOG_MAX_LINES": 10_000,
    "RUN_LOG_MAX_BYTES": 1_000_000,
    "HEALTH_MAX_HEARTBEAT_AGE": 180,
    "OWNERS_MANAGE_OWN_FLOWS": True,
    "CATCHUP_GRACE": 300,
}


class DataFlowsSettings:
    """Typed access to ``settings.DATAFLOWS`` merged over :data:`DEFAULTS`."""

    @property
    def _user(self) -> Mapping[str, Any]:
        value = getattr(settings, "DATAFLOWS", {})
        # A wrong type is reported by the dataflows.E001 check; fall back to defaults here.
        return value if isinstance(value, Mapping) else {}

    def _get(self, key: str) -> Any:
        return self._user.get(key, DEFAULTS[key])

    @property
    def BACKEND(self) -> str:
        return str(self._get("BACKEND"))

    @property
    def HEARTBEAT_TOKEN(self) -> str | None:
        value = self._get("HEARTBEAT_TOKEN")
        return None if value is None else str(value)

    @property
    def HEARTBEAT_ALLOWED_IPS(self) -> list[str]:
        return list(self._get("HEARTBEAT_ALLOWED_IPS") or [])

    @property
    def HEARTBEAT_TRUSTED_PROXIES(self) -> list[str]:
        return list(self._get("HEARTBEAT_TRUSTED_PROXIES") or [])

    @property
    def HEARTBEAT_BATCH_SIZE(self) -> int:
        return int(self._get("HEARTBEAT_BATCH_SIZE"))

    @property
    def HEARTBEAT_MAX_BODY_SIZE(self) -> int:
        return int(self._get("HEARTBEAT_MAX_BODY_SIZE"))

    @property
    def DEFAULT_QUEUE(self) -> str:
        return str(self._get("DEFAULT_QUEUE"))

    @property
    def ALLOWED_QUEUES(self) -> list[str] | None:
        value = self._get("ALLOWED_QUEUES")
        return None if value is None else list(value)

    @property
    def MAX_RETRIES(self) -> int:
        return int(self._get("MAX_RETRIES"))

    @property
    def RETRY_BACKOFF(self) -> float:
        return float(self._get("RETRY_BACKOFF"))

    @property
    def RUN_TIMEOUT(self) -> int:
        return int(self._get("RUN_TIMEOUT"))

    @property
    def PICKUP_TIMEOUT(self) -> float:
        return float(self._get("PICKUP_TIMEOUT"))

    @property
    def MAX_REDELIVERIES(self) -> int:
        return int(self._get("MAX_REDELIVERIES"))

    @property
    def CALLBACKS(self) -> list[str]:
        return list(self._get("CALLBACKS") or [])

    @property
    def FLOW_MODULES(self) -> list[str]:
        value = self._get("FLOW_MODULES")
        # A string would otherwise be split into one-letter module names. A wrong type is
        # reported by the dataflows.E011 check; nothing extra is imported meanwhile.
        if not is_list_of_strings(value):
            return []
        return list(value)

    @property
    def EVENTS(self) -> str:
        return str(self._get("EVENTS"))

    @property
    def EVENTS_REDIS_URL(self) -> str:
        return str(self._get("EVENTS_REDIS_URL"))

    @property
    def SSE_KEEPALIVE(self) -> float:
        return float(self._get("SSE_KEEPALIVE"))

    @property
    def SSE_POLL_INTERVAL(self) -> float:
        return float(self._get("SSE_POLL_INTERVAL"))

    @property
    def SSE_WSGI_MAX_SECONDS(self) -> float:
        return float(self._get("SSE_WSGI_MAX_SECONDS"))

    @property
    def SSE_WSGI_MAX_STREAMS(self) -> int:
        return int(self._get("SSE_WSGI_MAX_STREAMS"))

    @property
    def SSE_DB_CONNECTIONS(self) -> int:
        return int(self._get("SSE_DB_CONNECTIONS"))

    @property
    def SSE_DB_WAIT(self) -> float:
        return float(self._get("SSE_DB_WAIT"))

    @property
    def ALERT_EMAILS(self) -> list[str]:
        value = self._get("ALERT_EMAILS") or []
        # A single address given as a string is one recipient, not a list of characters.
        return [value] if isinstance(value, str) else list(value)

    @property
    def MAX_INPUT_BYTES(self) -> int:
        return int(self._get("MAX_INPUT_BYTES"))

    @property
    def MAX_CONFIGURATION_BYTES(self) -> int:
        return int(self._get("MAX_CONFIGURATION_BYTES"))

    @property
    def MAX_JSON_DEPTH(self) -> int:
        return int(self._get("MAX_JSON_DEPTH"))

    @property
    def SUMMARY_FIELD_BYTES(self) -> int:
        return int(self._get("SUMMARY_FIELD_BYTES"))

    @property
    def SSE_CLIENT_QUEUE(self) -> int:
        return int(self._get("SSE_CLIENT_QUEUE"))

    @property
    def SSE_REPLAY_MAX_EVENTS(self) -> int:
        return int(self._get("SSE_REPLAY_MAX_EVENTS"))

    @property
    def SSE_REPLAY_MAX_BYTES(self) -> int:
        return int(self._get("SSE_REPLAY_MAX_BYTES"))

    @property
    def RUN_LOG_LEVEL(self) -> int:
        """The level a record needs to enter its run's log (a name or a number)."""
        value = self._get("RUN_LOG_LEVEL")
        if isinstance(value, int):
            return value
        level = logging.getLevelName(str(value).upper())
        # An unknown name is reported by the dataflows.E060 check; meanwhile, INFO.
        return level if isinstance(level, int) else logging.INFO

    @property
    def RUN_LOG_MAX_LINES(self) -> int:
        return int(self._get("RUN_LOG_MAX_LINES"))

    @property
    def RUN_LOG_MAX_BYTES(self) -> int:
        return int(self._get("RUN_LOG_MAX_BYTES"))

    @property
    def HEALTH_MAX_HEARTBEAT_AGE(self) -> float:
        return float(self._get("HEALTH_MAX_HEARTBEAT_AGE"))

    @property
    def OWNERS_MANAGE_OWN_FLOWS(self) -> bool:
        return bool(self._get("OWNERS_MANAGE_OWN_FLOWS"))

    @property
    def CATCHUP_GRACE(self) -> float:
        """Seconds a slot may be late before a ``catchup="skip"`` flow drops it."""
        return float(self._get("CATCHUP_GRACE"))


def is_list_of_strings(value: Any) -> bool:
    """A list or tuple whose items are all strings (a bare string is not one)."""
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


app_settings = DataFlowsSettings()
