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

Where the project lets psycopg prepare statements (``"prepare_threshold"`` in the
database's ``OPTIONS``; Django leaves it off by default, for transaction-pooling proxies),
both statements go through a cursor that binds parameters on the server, so PostgreSQL
plans each of them once per connection instead of once per run (:func:`_cursor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.db.models import Model

from django_dataflows.bookkeeping import outcome_sql, started_sql
from django_dataflows.models import DataFlow, DataFlowRun, RunStatus, announce_runs_changed


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _columns(model: type[DataFlow] | type[DataFlowRun]) -> list[str]:
    return [str(field.column) for field in model._meta.concrete_fields]


@lru_cache(maxsize=4)
def _loaders(model: type[Model]) -> tuple[list[str], list[Callable[..., Any] | None]]:
    """The attribute names of ``model``'s columns and, per column, its ``from_db_value``."""
    fields = model._meta.concrete_fields
    return [field.attname for field in fields], [
        getattr(field, "from_db_value", None) for field in fields
    ]


def _instance(model: type[Model], values: Sequence[Any]) -> Any:
    """A model instance from a raw row, each value converted as the ORM would (JSON)."""
    names, loaders = _loaders(model)
    converted = [
        value if load is None else load(value, None, connection)
        for load, value in zip(loaders, values, strict=True)
    ]
    return model.from_db(connection.alias, names, converted)


def _cursor() -> CursorWrapper:
    """A cursor for the worker's statements, which PostgreSQL may keep prepared.

    Django's cursors bind parameters on the client, so PostgreSQL parses and plans the
    text of every statement anew: about a quarter of a millisecond for each of the two
    here, on every run. Where the connection allows prepared statements (psycopg 3 with
    ``"prepare_threshold"`` in ``OPTIONS``), this cursor binds on the server instead, and
    psycopg prepares the statement once it has been run that many times on the connection.
    Elsewhere (the default, safe behind PgBouncer in transaction mode; psycopg 2), and
    while queries are logged (``DEBUG``: the log shows each statement with its values), it
    is Django's own cursor. Either way database errors are Django's.
    """
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if getattr(raw, "prepare_threshold", None) is None or connection.queries_logged:
        return connection.cursor()
    # psycopg 3 is the one with prepare_threshold.
    from django.db.backends.postgresql.base import ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg import adapters
    from psycopg.pq import Format

    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = ServerBindingCursor(raw)  # type: ignore[call-arg]  # stubs: no arguments
        # As Django's create_cursor(): datetimes in the connection's current time zone
        # (it differs from the one the connection was opened with after a settings change).
        loader = raw.adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)
        if connection.timezone != getattr(loader, "timezone", connection.timezone):
            register_tzloader(connection.timezone, cursor)
        return connection.make_cursor(cursor)  # type: ignore[arg-type]  # stubs: a DB-API cursor


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
    with _cursor() as cursor:
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
    with _cursor() as cursor:
        cursor.execute(sql, params + flow_params + [run.data_flow_id, run.data_flow_id])
        ended, failures, overdue_since = cursor.fetchone()
    if ended:
        announce_runs_changed([run.pk], connection.alias)
        if failures is not None:
            run.flow_alert_state = (failures, overdue_since)
    return bool(ended)
