"""``--as-user USERNAME``: a command acts as that user, sees what they see and is
recorded as them in the audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError, CommandParser


def add_as_user_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--as-user",
        metavar="USERNAME",
        default=None,
        help="Act as this user: only the flows they may see or change, recorded as theirs.",
    )


def resolve_user(username: str | None) -> Any:
    """The active user named ``username`` (``None`` without one); a command error if none."""
    if username is None:
        return None
    model = get_user_model()
    try:
        user = model._default_manager.get_by_natural_key(username)
    except model.DoesNotExist:
        raise CommandError(f"--as-user: there is no user {username!r}.") from None
    if not user.is_active:
        raise CommandError(f"--as-user: the user {username!r} is not active.")
    return user
