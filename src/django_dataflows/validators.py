"""Field validators shared by the models, the admin, the API and the system checks."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

from django_dataflows.conf import app_settings
from django_dataflows.flows import is_registered

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
