"""Field validators shared by the models, the admin, the API and the system checks."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.deconstruct import deconstructible
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from django_dataflows.conf import app_settings
from django_dataflows.flows import is_registered

if TYPE_CHECKING:
    from django_dataflows.flows import Flow

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


def queue_name_syntax_error(name: Any) -> str | None:
    """Why ``name`` is not a well-formed queue name, or ``None`` when it is."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        return (
            f"{name!r} is not a valid queue name: use 1-100 letters, digits, '_', '.', ':' "
            "or '-', starting with a letter or digit."
        )
    return None


def queue_name_error(name: Any) -> str | None:
    """Why ``name`` is not an acceptable queue name here, or ``None`` when it is."""
    syntax_error = queue_name_syntax_error(name)
    if syntax_error:
        return syntax_error
    allowed = app_settings.ALLOWED_QUEUES
    if allowed is not None and name not in allowed:
        return f"Queue {name!r} is not in DATAFLOWS['ALLOWED_QUEUES'] ({', '.join(allowed)})."
    return None


def validate_queue_name(value: str) -> None:
    error = queue_name_error(value)
    if error:
        raise ValidationError(error, code="invalid_queue")


def validate_registered_flow(value: str) -> None:
    if not is_registered(value):
        raise ValidationError(
            "%(path)s is not a registered flow. Define it as a subclass of "
            "django_dataflows.Flow in an installed app's flows module.",
            code="unregistered_flow",
            params={"path": repr(value)},
        )


@deconstructible
class JSONObjectValidator:
    """Accept only a JSON object (a ``dict``), the shape a flow's configuration must have."""

    message = 'Enter a JSON object, such as {"batch_size": 500}.'
    code = "not_an_object"

    def __call__(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError(self.message, code=self.code)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONObjectValidator)

    def __hash__(self) -> int:
        return hash(type(self))


validate_json_object = JSONObjectValidator()


def schema_error(schema: Any) -> str | None:
    """Why ``schema`` is not a valid JSON Schema, or ``None`` when it is (or is ``None``)."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        return f"must be a JSON Schema (a dict), not {type(schema).__name__}"
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        return f"{where + ': ' if where else ''}{exc.message}"
    return None


def configuration_errors(flow_class: type[Flow], configuration: Any) -> list[str]:
    """What is wrong with ``configuration`` for ``flow_class``: one message per problem.

    Each names the path of the offending value (``batch_size: -1 is less than the minimum
    of 1``). A flow without ``configuration_schema`` accepts any JSON object.
    """
    schema = flow_class.configuration_schema
    if schema is None:
        return []
    validator_class = validator_for(schema)
    # Validate what will be stored (dates become strings), as the flow will read it.
    stored = json.loads(json.dumps(configuration, cls=DjangoJSONEncoder))
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    messages = []
    for error in sorted(validator.iter_errors(stored), key=lambda e: list(map(str, e.path))):
        where = ".".join(str(part) for part in error.absolute_path)
        messages.append(f"{where}: {error.message}" if where else error.message)
    return messages


def validate_configuration(flow_class: type[Flow], configuration: Any) -> None:
    """Raise ``ValidationError`` (one message per problem) unless ``configuration`` matches.

    ``flow_class.configuration_schema`` is a JSON Schema, checked with ``jsonschema``.
    """
    messages = configuration_errors(flow_class, configuration)
    if messages:
        raise ValidationError(
            [ValidationError(message, code="configuration_schema") for message in messages]
        )


def validate_run_input(value: Any) -> None:
    """A run's input must be a JSON object that can be stored."""
    if not isinstance(value, dict):
        raise ValidationError(
            'The run input must be a JSON object, such as {"since": "2026-01-01"}, not %(type)s.',
            code="input_not_an_object",
            params={"type": type(value).__name__},
        )
    try:
        json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            "The run input cannot be stored as JSON: %(error)s",
            code="input_not_json",
            params={"error": str(exc)},
        ) from exc
