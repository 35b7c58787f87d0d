"""Permissions: Django's model permissions per action, plus ``dataflows.run_dataflow``.

The owner of a flow needs none of them for what an owner may do to it (see
:meth:`~django_dataflows.models.DataFlow.user_may`): the view lets them through, its
queryset shows them only their own flows and runs, and the object check decides.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from django_dataflows.models import (
    OWNER_MANAGE_PERMISSIONS,
    OWNER_VIEW_PERMISSIONS,
    DataFlow,
    DataFlowRun,
    owns_a_flow,
)
from django_dataflows.permissions import RUN_PERMISSION

__all__ = ["RUN_PERMISSION", "ActionPermission"]

#: What an owner may be allowed for their own flows without the model permission.
OWNER_PERMISSIONS = OWNER_VIEW_PERMISSIONS | OWNER_MANAGE_PERMISSIONS


def _required(view: Any) -> tuple[str, ...]:
    table: dict[str | None, tuple[str, ...]] = view.action_permissions
    return table.get(getattr(view, "action", None), table[None])


class ActionPermission(BasePermission):
    """Allow an authenticated user holding every permission the view names for its action,
    or the owner of the flow concerned for what owners may do.

    Views list them in ``action_permissions`` (action name → permission names); the entry
    under ``None`` applies to everything else (``OPTIONS``, and methods the view does not
    allow, which then answer 405). Anonymous users are refused: 401 when an authentication
    scheme can challenge them (token, basic), else 403; so are users who own no flow and
    lack the permission. A permission an owner could hold lets owners through to the
    view, whose queryset is scoped to what the user sees
    (others' flows answer 404) and whose object check then decides (403 for a flow the
    user sees but may not act on).
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        required = _required(view)
        if user.has_perms(required):
            return True
        return set(required) <= OWNER_PERMISSIONS and owns_a_flow(user)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        data_flow = obj.data_flow if isinstance(obj, DataFlowRun) else obj
        if not isinstance(data_flow, DataFlow):
            return True
        return all(data_flow.user_may(request.user, permission) for permission in _required(view))
