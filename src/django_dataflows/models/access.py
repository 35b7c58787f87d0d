"""Who sees which flows and runs: the permissions owners get on their own flows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


#: What seeing flows and runs takes for users who do not own them.
VIEW_FLOW_PERMISSION = "dataflows.view_dataflow"
VIEW_RUN_PERMISSION = "dataflows.view_dataflowrun"
#: What an owner may do to their own flows without the model permissions...
OWNER_VIEW_PERMISSIONS = frozenset({VIEW_FLOW_PERMISSION, VIEW_RUN_PERMISSION})
#: ...and, with ``DATAFLOWS["OWNERS_MANAGE_OWN_FLOWS"]``, also this.
OWNER_MANAGE_PERMISSIONS = frozenset({"dataflows.change_dataflow", "dataflows.run_dataflow"})


def _is_active_user(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def may_see_every_run(user: Any) -> bool:
    """Whether ``user`` sees every run: the view (or change) model permission of runs."""
    return _is_active_user(user) and (
        user.has_perm(VIEW_RUN_PERMISSION) or user.has_perm("dataflows.change_dataflowrun")
    )


def may_see_every_flow(user: Any) -> bool:
    """Whether ``user`` sees every flow: the view (or change) model permission.

    Everyone else sees only the flows they own (``DataFlow.objects.visible_to(user)``);
    the API, the admin, the streams and the commands' ``--as-user`` all scope through here.
    """
    return _is_active_user(user) and (
        user.has_perm(VIEW_FLOW_PERMISSION) or user.has_perm("dataflows.change_dataflow")
    )
