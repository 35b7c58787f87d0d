"""A transition as one statement: PostgreSQL's worker path.

:func:`~django_dataflows.runs.transitions.apply` carries a transition out through the ORM
in one transaction: the run's conditional ``UPDATE``, then its flow's, then its steps'.
On PostgreSQL, outside a transaction, the same querysets, compiled by Django, are joined
into one statement with data-modifying ``WITH`` clauses, and its commit is the run's only
one: a worker costs two statements per run (:func:`take`, then the end).

The worker's start mark (the ``start`` transition is not ``durable``) does not wait for
its commit (``synchronous_commit`` off for that transaction only). Losing it in a database
crash leaves the run ``pending``, as if no worker had taken it: the heartbeat's redelivery
handles such a run, and the body had not started before the mark returned.

Where the project lets psycopg prepare statements (``"prepare_threshold"`` in the
database's ``OPTIONS``; Django leaves it off by default, for transaction-pooling proxies),
the statements go through a cursor that binds parameters on the server, so PostgreSQL
plans each of them once per connection instead of once per run (:func:`_cursor`).
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.backends.utils import CursorWrapper
from django.db.models import BooleanField, Model, QuerySet
from django.db.models.expressions import RawSQL

from django_dataflows.models import DataFlow, DataFlowRun, announce_runs_changed
from django_dataflows.runs.sql import compiled_update, converters, returning_sql
from django_dataflows.runs.transitions import Transition

#: The name of the run's ``UPDATE`` in the statement, which the flow's refers to.
_MOVED = "moved"
_DURABILITY_OFF = RawSQL(
    "set_config('synchronous_commit', 'off', true) IS NOT NULL", (), output_field=BooleanField()
)


def _cursor() -> CursorWrapper:
    """A cursor for the worker's statements, which PostgreSQL may keep prepared.

    Django's cursors bind parameters on the client, so PostgreSQL parses and plans the
    text of every statement anew: about a quarter of a millisecond for each, on every run.
    Where the connection allows prepared statements (psycopg 3 with
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


#: The run's fields read back from every transition's write.
RETURNED = (
    "status",
    "started_at",
    "activated_at",
    "ended_at",
    "duration_ms",
    "cancel_requested_at",
    "pause_requested_at",
    "updated_at",
)


def load_run(run: DataFlowRun, row: dict[str, Any], fields: dict[str, Any] | None) -> None:
    """Show on ``run`` what its transition wrote: the row read back, and plain values."""
    for name, value in (fields or {}).items():
        if not hasattr(value, "resolve_expression"):
            setattr(run, name, value)
    for name, value in row.items():
        if name != "pk":
            setattr(run, name, value)


def load_flow(data_flow: DataFlow, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(data_flow, name, value)


def _names(model: type[Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


def _statement(
    transition: Transition,
    runs: QuerySet[DataFlowRun],
    fields: dict[str, Any] | None,
    flow_values: dict[str, Any],
    run_names: list[str],
    flow_names: list[str],
    run_ids: list[int],
) -> list[Any] | None:
    """Run the transition's statement; the row it returns (run fields, flow fields, alert state)."""
    if not transition.durable:
        runs = runs.filter(_DURABILITY_OFF)
    run_sql, params = compiled_update(runs, transition.assignments(fields))
    sql = f"WITH {_MOVED} AS ({run_sql} RETURNING {returning_sql(DataFlowRun, run_names)})"
    flow_table = connection.ops.quote_name(DataFlow._meta.db_table)
    selected = [f"{_MOVED}.{connection.ops.quote_name(name)}" for name in run_names]
    joined = ""
    if flow_values:
        # Names only: no value of anybody's in this SQL.
        mine = RawSQL(  # noqa: S611
            f"{flow_table}.id IN (SELECT data_flow_id FROM {_MOVED})",  # noqa: S608
            (),
            BooleanField(),
        )
        flow_sql, flow_params = compiled_update(
            transition.flows(None, run_ids).filter(mine), flow_values
        )
        returning = returning_sql(DataFlow, flow_names)
        sql += f", flow AS ({flow_sql} RETURNING {returning})"
        params += flow_params
        selected += [f"flow.{connection.ops.quote_name(name)}" for name in flow_names]
        joined = f" LEFT JOIN flow ON flow.id = {_MOVED}.data_flow_id"
    if transition.ends:
        # The flow's alert state, read by the same statement (the alerts need no read).
        selected += [
            f"(SELECT {column} FROM {flow_table} WHERE id = {_MOVED}.data_flow_id)"  # noqa: S608
            for column in ("consecutive_failures", "overdue_episode_since")
        ]
    sql += f" SELECT {', '.join(selected)} FROM {_MOVED}{joined}"  # noqa: S608 - no user input
    with _cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else list(row)


def _convert(model: type[Model], names: list[str], values: list[Any]) -> list[Any]:
    fields = [model._meta.get_field(name).name for name in names]  # attname -> name
    return [
        load(value)
        for load, value in zip(converters(model, fields, connection.alias), values, strict=True)
    ]


def take(transition: Transition, run_id: int) -> DataFlowRun | None:
    """The ``start`` transition on the run ``run_id``: the run and its flow, freshly read.

    ``None`` if the run is not pending (a duplicated or late message).
    """
    run_names, flow_names = _names(DataFlowRun), _names(DataFlow)
    run = DataFlowRun(pk=run_id)
    row = _statement(
        transition,
        transition.runs([run_id]),
        None,
        transition.flow_values(run),
        run_names,
        flow_names,
        [run_id],
    )
    if row is None:
        return None
    split = len(run_names)
    taken: DataFlowRun = DataFlowRun.from_db(
        connection.alias, run_names, _convert(DataFlowRun, run_names, row[:split])
    )
    taken.data_flow = DataFlow.from_db(
        connection.alias, flow_names, _convert(DataFlow, flow_names, row[split:])
    )
    announce_runs_changed([run_id], connection.alias)
    return taken


def apply_as_statement(
    transition: Transition,
    run: DataFlowRun,
    *,
    fields: dict[str, Any] | None = None,
    flow_fields: dict[str, Any] | None = None,
) -> bool:
    """:func:`~django_dataflows.runs.transitions.apply` in one statement (see the module)."""
    flow_values = transition.flow_values(run, flow_fields)
    run_names = ["data_flow_id", *RETURNED]
    row = _statement(
        transition,
        transition.runs([run.pk]),
        fields,
        flow_values,
        run_names,
        ["id"] if flow_values else [],
        [run.pk],
    )
    if row is None:
        return False
    returned = dict(
        zip(run_names, _convert(DataFlowRun, run_names, row[: len(run_names)]), strict=True)
    )
    load_run(run, returned, fields)
    rest = row[len(run_names) :]
    if flow_values:
        flow_id, rest = rest[0], rest[1:]
        if flow_id is not None:
            load_flow(run.data_flow, flow_values)
    if transition.ends and rest[0] is not None:
        run.flow_alert_state = (rest[0], rest[1])
    announce_runs_changed([run.pk], connection.alias)
    return True
