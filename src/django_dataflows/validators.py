"""Field validators shared by the models, the admin, the API and the system checks."""

from __future__ import annotations

import json
import math
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


def storable_json_problem(value: Any, *, max_bytes: int | None = None) -> str | None:
    """Why ``value`` cannot be stored as JSON on every supported database, else ``None``.

    The one rule for every JSON value a person or program hands us (a flow's
    configuration, a run's input): no NUL character and no lone surrogate (half an emoji)
    in a string or a key, only finite numbers, at most ``MAX_JSON_DEPTH`` levels of
    nesting, and, with ``max_bytes``, at most that many bytes once encoded. The walk is
    iterative, so a value nested 100,000 deep is refused rather than a ``RecursionError``.
    """
    max_depth = app_settings.MAX_JSON_DEPTH
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > max_depth:
            return f"is nested deeper than {max_depth} levels"
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "contains a number that is not finite (NaN or Infinity)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str):
                    problem = _string_problem(key)
                    if problem:
                        return f"has a key that {problem}"
                pending.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend((child, depth + 1) for child in item)
    if max_bytes is not None:
        try:
            size = len(json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False).encode())
        except (TypeError, ValueError) as exc:
            return f"cannot be written as JSON: {exc}"
        if size > max_bytes:
            return f"is {size:,} bytes long; at most {max_bytes:,} are accepted"
    return None


def capped_json(value: Any, max_bytes: int) -> Any:
    """``value``, or when its JSON is longer than ``max_bytes`` a small stand-in saying so
    (``{"truncated": true, "bytes": n}``): list pages and live events carry bounded
    payloads; a run's own page (``runs/{id}/``) has the whole value."""
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        size = len(json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False).encode())
    except (TypeError, ValueError, RecursionError):
        return {"truncated": True, "bytes": None}
    return value if size <= max_bytes else {"truncated": True, "bytes": size}


def cap_large_fields(run: dict[str, Any]) -> dict[str, Any]:
    """A run for a list page or a live event: ``input``, ``result`` and the steps' results
    longer than ``SUMMARY_FIELD_BYTES`` become ``{"truncated": true, "bytes": n}``, so
    what one page or event holds stays bounded (the run's own page has them whole)."""
    limit = app_settings.SUMMARY_FIELD_BYTES
    for key in ("input", "result"):
        if key in run:
            run[key] = capped_json(run[key], limit)
    for step in run.get("steps") or ():
        step["result"] = capped_json(step.get("result"), limit)
    return run


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff, half of a character such as an emoji)"
    return None


def load_json_text(text: str | bytes) -> Any:
    """``json.loads`` that refuses too deep a nesting with ``ValueError``, never
    ``RecursionError`` (the C decoder recurses once per level)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            f"JSON nested deeper than {app_settings.MAX_JSON_DEPTH} levels is not accepted"
        ) from None


@deconstructible
class JSONObjectValidator:
    """Accept only a storable JSON object (a ``dict``), the shape a flow's configuration
    and a run's input must have (see :func:`storable_json_problem`; sizes are checked
    where the kind of value is known)."""

    message = 'Enter a JSON object, such as {"batch_size": 500}.'
    code = "not_an_object"

    def __call__(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError(self.message, code=self.code)
        problem = storable_json_problem(value)
        if problem:
            raise ValidationError(
                "This JSON object %(problem)s.", code="not_storable", params={"problem": problem}
            )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONObjectValidator)

    def __hash__(self) -> int:
        return hash(type(self))


def validate_configuration_object(value: Any) -> None:
    """A flow's configuration: a storable JSON object within ``MAX_CONFIGURATION_BYTES``."""
    validate_json_object(value)
    problem = storable_json_problem(value, max_bytes=app_settings.MAX_CONFIGURATION_BYTES)
    if problem:
        raise ValidationError(
            "The configuration %(problem)s.", code="not_storable", params={"problem": problem}
        )


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
    problem = schema_error(schema)
    if problem:  # reported at start-up too (dataflows.E040); never a crash here
        return [
            f"{flow_class.flow_path()}.configuration_schema is not a valid JSON Schema: {problem}"
        ]
    problem = storable_json_problem(configuration)
    if problem:  # a row stored around validation: jsonschema would recurse without end
        return [f"The configuration {problem}."]
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
    """A run's input must be a storable JSON object within ``MAX_INPUT_BYTES``."""
    if not isinstance(value, dict):
        raise ValidationError(
            'The run input must be a JSON object, such as {"since": "2026-01-01"}, not %(type)s.',
            code="input_not_an_object",
            params={"type": type(value).__name__},
        )
    problem = storable_json_problem(value, max_bytes=app_settings.MAX_INPUT_BYTES)
    if problem:
        raise ValidationError(
            "The run input %(problem)s.", code="input_not_json", params={"problem": problem}
        )
