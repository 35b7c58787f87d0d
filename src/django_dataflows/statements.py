"""The worker path on PostgreSQL: each statement here does in one round trip what the ORM
does in several. Only :class:`~django_dataflows.executor.FlowExecutor` calls them.

A run costs the worker two statements and one durable commit:

* :func:`take_pending_run` loads the run and its flow, moves the run ``pending →
  in_progress`` and shows it on the flow, in one statement whose commit is **not** waited
  for (``synchronous_commit`` off for that transaction only). Losing it in a database crash
  leaves the run ``pending``, as if the worker had never taken it: the heartbeat's reaper
  already handles such a run, and the flow body had not started before the mark returned.
* :func:`end_run` writes the outcome and the flow's bookkeeping in one statement, an
  ordinary durable commit: once it returns, the outcome survives a crash.

Columns come from the models' ``_meta``; every value is a parameter, prepared by its field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.models import Model

from django_dataflows.bookkeeping import outcome_sql, started_sql
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, announce_runs_changed


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _columns(model: type[DataFlow] | type[DataFlowRun]) -> list[str]:
    return [str(field.column) for field in model._meta.concrete_fields]


def _instance(model: type[Model], values: Sequence[Any]) -> Any:
    """A model instance from a raw row, each value converted as the ORM would (JSON)."""
    fields = model._meta.concrete_fields
    converted = [
        field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
        for field, value in zip(fields, values, strict=True)
    ]
    return model.from_db(connection.alias, [field.attname for field in fields], converted)


@lru_cache(maxsize=4)
def _take_sql(vendor_table: str) -> str:
    run_columns, flow_columns = _columns(DataFlowRun), _columns(DataFlow)
    flow_update, _params = started_sql("taken")
    selected = [f"taken.{_quote(c)}" for c in run_columns]
    selected += [f"flow.{_quote(c)}" for c in flow_columns]
    return (
        f"WITH taken AS (UPDATE {vendor_table} "  # noqa: S608
        "SET status = %s, activated_at = STATEMENT_TIMESTAMP(), "
        "started_at = COALESCE(started_at, STATEMENT_TIMESTAMP()), "
        "updated_at = STATEMENT_TIMESTAMP() "
        "WHERE id = %s AND status = %s "
        "AND set_config('synchronous_commit', 'off', true) IS NOT NULL RETURNING *), "
        f"flow AS ({flow_update}) "
        f"SELECT {', '.join(selected)} FROM taken JOIN flow ON flow.id = taken.data_flow_id"
    )


def take_pending_run(run_id: int) -> DataFlowRun | None:
    """Take the pending run ``run_id`` (with its flow, freshly read); ``None`` if not pending.

    ``started_at`` keeps the first start (a resumed run has one); ``activated_at`` is now
    on the database's clock (a run's timeout counts from it, as the reaper's deadlines
    do), so ``run.started_at != run.activated_at`` tells a resumed run.
    """
    _flow_update, flow_params = started_sql("taken")
    params: list[Any] = [RunStatus.IN_PROGRESS.value, run_id, RunStatus.PENDING.value]
    with connection.cursor() as cursor:
        cursor.execute(_take_sql(_quote(DataFlowRun._meta.db_table)), params + flow_params)
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(DataFlowRun._meta.concrete_fields)
    run: DataFlowRun = _instance(DataFlowRun, row[:split])
    run.data_flow = _instance(DataFlow, row[split:])
    # Written in one statement, not through a queryset: tell live status ourselves.
    announce_runs_changed([run.pk], connection.alias)
    return run


def end_run(
    run: DataFlowRun,
    expected: tuple[str, ...],
    status: str,
    fields: dict[str, Any],
    *,
    last_run_at: datetime | None,
    flow_fields: dict[str, Any],
) -> bool:
    """End ``run`` as ``status`` if it is still in ``expected``, with its flow's bookkeeping.

    One statement, one durable commit. ``False`` if the run had moved on.
    """
    assignments = ["status = %s", "updated_at = STATEMENT_TIMESTAMP()"]
    params: list[Any] = [status]
    for name, value in fields.items():
        model_field = DataFlowRun._meta.get_field(name)
        assignments.append(f"{_quote(str(model_field.column))} = %s")  # type: ignore[union-attr]
        params.append(model_field.get_db_prep_save(value, connection))  # type: ignore[union-attr]
    placeholders = ", ".join(["%s"] * len(expected))
    flow_table = _quote(DataFlow._meta.db_table)
    params += [run.pk, *expected]
    flow_update, flow_params = outcome_sql(
        "done", status, last_run_at=last_run_at, flow_fields=flow_fields
    )
    sql = (
        f"WITH done AS (UPDATE {_quote(DataFlowRun._meta.db_table)} "  # noqa: S608
        f"SET {', '.join(assignments)} WHERE id = %s AND status IN ({placeholders}) "
        "RETURNING id, data_flow_id), "
        f"flow AS ({flow_update}) "
        # The flow's alert state, read by the same statement (the alerts need no read).
        f"SELECT count(*), (SELECT consecutive_failures FROM {flow_table} WHERE id = %s), "
        f"(SELECT overdue_episode_since FROM {flow_table} WHERE id = %s) FROM done"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params + flow_params + [run.data_flow_id, run.data_flow_id])
        ended, failures, overdue_since = cursor.fetchone()
    if ended:
        announce_runs_changed([run.pk], connection.alias)
        if failures is not None:
            run.flow_alert_state = (failures, overdue_since)
    return bool(ended)
