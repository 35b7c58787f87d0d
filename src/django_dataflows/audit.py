"""The audit trail: one helper every surface (admin, API, commands) records changes with.

Call :func:`record` inside the transaction that makes the change (``transaction.atomic``):
the entry commits with it, or not at all. Scheduled runs are not recorded; their runs
are the record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import transaction

from django_dataflows.models import AuditEntry

if TYPE_CHECKING:
    from django.http import HttpRequest

    from django_dataflows.models import DataFlow, DataFlowRun

__all__ = ["changed_fields", "client_address", "record"]


def record(
    action: str,
    *,
    source: str,
    actor: Any = None,
    data_flow: DataFlow | None = None,
    run: DataFlowRun | None = None,
    details: dict[str, Any] | None = None,
    remote_addr: str | None = None,
) -> AuditEntry:
    """Record ``action`` (an :class:`~django_dataflows.models.AuditAction`) by ``actor``.

    Must run inside the change's own transaction; outside one it raises
    ``TransactionManagementError``, since an entry written apart from its change could
    outlive a change that rolled back.
    """
    if not transaction.get_connection().in_atomic_block:
        raise transaction.TransactionManagementError(
            "Record an audit entry inside the transaction of the change it records."
        )
    if data_flow is None and run is not None:
        data_flow = run.data_flow
    return AuditEntry.objects.create(
        action=action,
        source=source,
        actor=actor if actor is not None and actor.is_authenticated else None,
        data_flow=data_flow,
        flow_name=data_flow.name if data_flow is not None else "",
        run=run,
        details=details or {},
        remote_addr=remote_addr or None,
    )


def client_address(request: HttpRequest) -> str | None:
    """The address the request came from, as the web server saw it."""
    return request.META.get("REMOTE_ADDR") or None


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The names of the fields whose values differ, sorted."""
    return sorted(name for name in after if before.get(name) != after[name])
