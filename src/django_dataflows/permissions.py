"""Who may make a flow run: the rule every door (admin, API) applies to flow edits.

Starting a run needs ``dataflows.run_dataflow``. So does anything that makes the heartbeat
start one, or changes what its next scheduled run does: enabling a flow, creating it
enabled, or changing the flow class or configuration of an enabled flow. Without this, a
user with only the change permission could point a flow at another class, enable it, and
have the next heartbeat run it with nobody named as its starter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_dataflows.models import DataFlow

#: Starting a run and controlling runs need this permission besides seeing them.
RUN_PERMISSION = "dataflows.run_dataflow"

#: What an enabled flow's next scheduled run executes.
WHAT_RUNS_FIELDS = ("flow", "configuration")


def fields_that_make_due(before: DataFlow | None, changes: Mapping[str, Any]) -> list[str]:
    """The fields in ``changes`` that need :data:`RUN_PERMISSION`.

    ``before`` is the flow as stored (``None`` for a new flow); ``changes`` the values about
    to be written (missing keys keep their stored value; a new flow is enabled by default).
    """
    if before is None:
        return ["enabled"] if changes.get("enabled", True) else []
    enabled = changes.get("enabled", before.enabled)
    if not enabled:
        return []
    if not before.enabled:
        return ["enabled"]
    return [
        name
        for name in WHAT_RUNS_FIELDS
        if name in changes and changes[name] != getattr(before, name)
    ]


def run_permission_message(fields: list[str]) -> str:
    """Why the change was refused, naming what needs the permission."""
    return (
        f"Changing {', '.join(fields)} makes this flow run: that needs the "
        f"{RUN_PERMISSION} permission."
    )
