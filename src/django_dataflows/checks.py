"""System checks: every misconfiguration is reported at start-up with an id.

Errors (``dataflows.E0xx``) and warnings (``dataflows.W0xx``) are listed in the
reference documentation; ``tests/test_checks.py`` pins the exact ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import validate_email
from django.urls import URLResolver, get_resolver
from django.utils.module_loading import import_string

from django_dataflows.conf import DEFAULTS, is_list_of_strings
from django_dataflows.flows import Flow, registered_flows
from django_dataflows.security import invalid_network_entries
from django_dataflows.validators import queue_name_error, queue_name_syntax_error, schema_error

MIN_TOKEN_LENGTH = 32
KEYGEN_COMMAND = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def _user_settings() -> Mapping[str, Any] | None:
    value = getattr(settings, "DATAFLOWS", {})
    return value if isinstance(value, Mapping) else None


def _get(config: Mapping[str, Any], key: str) -> Any:
    return config.get(key, DEFAULTS[key])


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    config = _user_settings()
    if config is None:
        return [
            Error(
                "The DATAFLOWS setting must be a dict.",
                hint="Set DATAFLOWS = {...} in your settings, or leave it out.",
                id="dataflows.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in config:
        if key not in DEFAULTS:
            errors.append(
                Error(
                    f"Unknown key DATAFLOWS[{key!r}].",
                    hint=f"Valid keys: {', '.join(sorted(DEFAULTS))}.",
                    id="dataflows.E002",
                )
            )
    errors += _check_backend(config)
    errors += _check_networks(config)
    errors += _check_queues(config)
    errors += _check_numbers(config)
    errors += _check_token(config)
    errors += _check_callbacks(config)
    errors += _check_flow_modules(config)
    errors += _check_live(config)
    errors += _check_alert_emails(config)
    errors += _check_run_log_level(config)
    errors += _check_catchup_grace(config)
    return errors


def _check_run_log_level(config: Mapping[str, Any]) -> list[CheckMessage]:
    level = _get(config, "RUN_LOG_LEVEL")
    if isinstance(level, int) and not isinstance(level, bool):
        return []
    if isinstance(level, str) and isinstance(logging.getLevelName(level.upper()), int):
        return []
    return [
        Error(
            f"DATAFLOWS['RUN_LOG_LEVEL'] must be a logging level, not {level!r}.",
            hint='A name such as "INFO" or "WARNING", or a number.',
            id="dataflows.E060",
        )
    ]


def _check_catchup_grace(config: Mapping[str, Any]) -> list[CheckMessage]:
    value = _get(config, "CATCHUP_GRACE")
    if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
        return [
            Error(
                f"DATAFLOWS['CATCHUP_GRACE'] must be a number of seconds, 0 or more, "
                f"not {value!r}.",
                id="dataflows.E070",
            )
        ]
    return []


def _check_live(config: Mapping[str, Any]) -> list[CheckMessage]:
    from django_dataflows.live import load_event_source_class

    errors: list[CheckMessage] = []
    for key in ("SSE_KEEPALIVE", "SSE_POLL_INTERVAL", "SSE_WSGI_MAX_SECONDS", "SSE_DB_WAIT"):
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, Real) or value <= 0:
            errors.append(
                Error(
                    f"DATAFLOWS[{key!r}] must be a positive number of seconds, not {value!r}.",
                    id="dataflows.E051",
                )
            )
    try:
        source = load_event_source_class(str(_get(config, "EVENTS")))
    except ImproperlyConfigured as exc:
        return [*errors, Error(str(exc), id="dataflows.E050")]
    return errors + source.check()


def _check_backend(config: Mapping[str, Any]) -> list[CheckMessage]:
    from django_dataflows.backends import load_backend

    path = _get(config, "BACKEND")
    try:
        backend = load_backend(str(path))
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="dataflows.E003")]
    return backend.check()


def _check_networks(config: Mapping[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key, check_id in (
        ("HEARTBEAT_ALLOWED_IPS", "dataflows.E004"),
        ("HEARTBEAT_TRUSTED_PROXIES", "dataflows.E005"),
    ):
        for entry in invalid_network_entries(_get(config, key)):
            errors.append(
                Error(
                    f"DATAFLOWS[{key!r}] has an entry that is not an IP address or network: "
                    f"{entry}.",
                    hint="Use a list of addresses or CIDR networks, e.g. ['10.0.0.0/8', '::1'] "
                    "(host bits must be zero).",
                    id=check_id,
                )
            )
    return errors


def _check_queues(config: Mapping[str, Any]) -> list[CheckMessage]:
    allowed = _get(config, "ALLOWED_QUEUES")
    if allowed is not None and (not isinstance(allowed, list | tuple) or not allowed):
        return [
            Error(
                "DATAFLOWS['ALLOWED_QUEUES'] must be None or a non-empty list of queue names.",
                id="dataflows.E006",
            )
        ]
    messages = [queue_name_syntax_error(name) for name in allowed or []]
    # The default queue must also be one of the allowed ones (read live, as the model does).
    messages.append(queue_name_error(_get(config, "DEFAULT_QUEUE")))
    return [Error(message, id="dataflows.E006") for message in messages if message]


_POSITIVE = (
    "HEARTBEAT_BATCH_SIZE",
    "HEARTBEAT_MAX_BODY_SIZE",
    "RUN_TIMEOUT",
    "RETRY_BACKOFF",
    "PICKUP_TIMEOUT",
    "MAX_INPUT_BYTES",
    "MAX_CONFIGURATION_BYTES",
    "MAX_JSON_DEPTH",
    "SSE_DB_CONNECTIONS",
    "SUMMARY_FIELD_BYTES",
    "SSE_CLIENT_QUEUE",
    "SSE_REPLAY_MAX_EVENTS",
    "SSE_REPLAY_MAX_BYTES",
    "RUN_LOG_MAX_LINES",
    "RUN_LOG_MAX_BYTES",
    "HEALTH_MAX_HEARTBEAT_AGE",
)
#: Positive settings that may be fractions of a second; the others are whole numbers.
_FRACTIONAL = frozenset({"RETRY_BACKOFF", "PICKUP_TIMEOUT", "HEALTH_MAX_HEARTBEAT_AGE"})


def _check_numbers(config: Mapping[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for key in _POSITIVE:
        value = _get(config, key)
        integral = key not in _FRACTIONAL
        wrong_type = isinstance(value, bool) or not isinstance(value, int if integral else Real)
        if wrong_type or value <= 0:
            kind = "integer" if integral else "number"
            errors.append(
                Error(
                    f"DATAFLOWS[{key!r}] must be a positive {kind}, not {value!r}.",
                    id="dataflows.E007",
                )
            )
    for key in ("MAX_RETRIES", "MAX_REDELIVERIES", "SSE_WSGI_MAX_STREAMS"):
        count = _get(config, key)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            errors.append(
                Error(
                    f"DATAFLOWS[{key!r}] must be an integer of 0 or more, not {count!r}.",
                    id="dataflows.E007",
                )
            )
    return errors


def _check_token(config: Mapping[str, Any]) -> list[CheckMessage]:
    token = _get(config, "HEARTBEAT_TOKEN")
    if token is None:
        return []
    if not isinstance(token, str) or not token.strip():
        return [
            Error(
                "DATAFLOWS['HEARTBEAT_TOKEN'] must be a non-empty string or None.",
                hint="An empty token would let nobody in; every heartbeat is refused until "
                "it is set (for example from an environment variable) or removed.",
                id="dataflows.E008",
            )
        ]
    return []


def _check_callbacks(config: Mapping[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    callbacks = _get(config, "CALLBACKS")
    if not isinstance(callbacks, list | tuple):
        return [
            Error(
                f"DATAFLOWS['CALLBACKS'] must be a list of dotted paths, not {callbacks!r}.",
                id="dataflows.E009",
            )
        ]
    for path in callbacks:
        try:
            target = import_string(path)
        except (ImportError, TypeError) as exc:
            errors.append(
                Error(
                    f"Could not import DATAFLOWS['CALLBACKS'] entry {path!r}: {exc}",
                    id="dataflows.E009",
                )
            )
            continue
        if not callable(target):
            errors.append(
                Error(
                    f"DATAFLOWS['CALLBACKS'] entry {path!r} is not callable.", id="dataflows.E009"
                )
            )
    return errors


def _check_flow_modules(config: Mapping[str, Any]) -> list[CheckMessage]:
    modules = _get(config, "FLOW_MODULES")
    if not is_list_of_strings(modules):
        return [
            Error(
                f"DATAFLOWS['FLOW_MODULES'] must be a list of module paths, not {modules!r}.",
                hint='For one module: ["myproject.flows"].',
                id="dataflows.E011",
            )
        ]
    app_config = apps.get_app_config("dataflows")
    return [
        Error(
            f"Could not import DATAFLOWS['FLOW_MODULES'] entry {module!r}: {exc}",
            id="dataflows.E010",
        )
        for module, exc in getattr(app_config, "flow_module_errors", [])
    ]


@register(Tags.compatibility)
def check_flows(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every registered flow's ``configuration_schema`` and ``steps`` make sense."""
    errors: list[CheckMessage] = []
    for path, flow_class in registered_flows().items():
        problem = schema_error(flow_class.configuration_schema)
        if problem:
            errors.append(
                Error(
                    f"{path}.configuration_schema is not a valid JSON Schema: {problem}",
                    hint="See https://json-schema.org/understanding-json-schema/.",
                    obj=flow_class,
                    id="dataflows.E040",
                )
            )
        errors += _check_steps(path, flow_class)
    return errors


def _check_steps(path: str, flow_class: type[Flow]) -> list[CheckMessage]:
    steps = flow_class.steps
    if not isinstance(steps, tuple | list) or not all(isinstance(name, str) for name in steps):
        return [
            Error(
                f"{path}.steps must be a tuple of method names, not {steps!r}.",
                obj=flow_class,
                id="dataflows.E041",
            )
        ]
    errors: list[CheckMessage] = []
    for name in steps:
        if not callable(getattr(flow_class, name, None)) or name in vars(Flow):
            errors.append(
                Error(
                    f"{path}.steps names {name!r}, which is not a method of the flow.",
                    hint=f"Define {name}(self) on {flow_class.__name__}, or remove it from steps.",
                    obj=flow_class,
                    id="dataflows.E041",
                )
            )
    if len(set(steps)) != len(steps):
        errors.append(
            Error(
                f"{path}.steps names a step twice: {steps!r}.",
                hint="Step names identify stored results; give each step its own method.",
                obj=flow_class,
                id="dataflows.E041",
            )
        )
    return errors


def _check_alert_emails(config: Mapping[str, Any]) -> list[CheckMessage]:
    addresses = _get(config, "ALERT_EMAILS")
    if isinstance(addresses, str):
        addresses = [addresses]
    if not isinstance(addresses, list | tuple):
        return [
            Error(
                f"DATAFLOWS['ALERT_EMAILS'] must be a list of e-mail addresses, not {addresses!r}.",
                id="dataflows.E020",
            )
        ]
    errors: list[CheckMessage] = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            errors.append(
                Error(
                    f"DATAFLOWS['ALERT_EMAILS'] has an invalid e-mail address: {address!r}.",
                    id="dataflows.E020",
                )
            )
    return errors


@register(Tags.security, deploy=True)
def check_heartbeat_security(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    config = _user_settings()
    if config is None:
        return []
    token = _get(config, "HEARTBEAT_TOKEN")
    allowed = _get(config, "HEARTBEAT_ALLOWED_IPS")
    warnings: list[CheckMessage] = []
    if not token and not allowed:
        warnings.append(
            Warning(
                "The heartbeat has neither DATAFLOWS['HEARTBEAT_TOKEN'] nor "
                "DATAFLOWS['HEARTBEAT_ALLOWED_IPS'] set.",
                hint="It then accepts any loopback client, and behind a reverse proxy on the "
                "same host every request arrives from loopback. Set a token.",
                id="dataflows.W001",
            )
        )
    if isinstance(token, str) and token.strip() and len(token) < MIN_TOKEN_LENGTH:
        warnings.append(
            Warning(
                f"DATAFLOWS['HEARTBEAT_TOKEN'] is shorter than {MIN_TOKEN_LENGTH} characters.",
                hint=f"Generate one with: {KEYGEN_COMMAND}",
                id="dataflows.W002",
            )
        )
    return warnings


#: The apps the REST API needs in INSTALLED_APPS (drf_spectacular for the Swagger UI page).
API_URLCONF = "django_dataflows.api.urls"
API_APPS = ("rest_framework", "django_filters", "drf_spectacular")


def _includes_api(patterns: Iterable[Any]) -> bool:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            module = pattern.urlconf_name
            name = module if isinstance(module, str) else getattr(module, "__name__", "")
            if name == API_URLCONF or _includes_api(pattern.url_patterns):
                return True
    return False


@register(Tags.urls)
def check_api_apps(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The REST API is included in the URLs, but the apps it needs are not installed."""
    try:
        included = _includes_api(get_resolver().url_patterns)
    except Exception:  # a broken URLconf is reported by Django's own check
        return []
    if not included:
        return []
    missing = [app for app in API_APPS if not apps.is_installed(app)]
    if not missing:
        return []
    return [
        Error(
            f"The django-dataflows REST API ({API_URLCONF}) is in your URLs, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in "
            "INSTALLED_APPS.",
            hint=f"Add {', '.join(repr(app) for app in missing)} to INSTALLED_APPS "
            "(installed with the 'api' extra: pip install 'django-dataflows[api]').",
            id="dataflows.E030",
        )
    ]
