"""Permissions: Django's model permissions per action, plus ``dataflows.run_dataflow``."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from django_dataflows.permissions import RUN_PERMISSION

__all__ = ["RUN_PERMISSION", "ActionPermission"]


class ActionPermission(BasePermission):
    """Allow an authenticated user holding every permission the view names for its action.

    Views list them in ``action_permissions`` (action name → permission names); the entry
    under ``None`` applies to everything else (``OPTIONS``, and methods the view does not
    allow, which then answer 405). Anonymous users are refused: 401 when an authentication
    scheme can challenge them (token, basic), else 403.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        table: dict[str | None, tuple[str, ...]] = view.action_permissions
        action = getattr(view, "action", None)
        required = table.get(action, table[None])
        return bool(user.has_perms(required))
