"""A transition as one statement: PostgreSQL's worker path.

:func:`~django_dataflows.runs.transitions.apply` carries a transition out through the ORM
in one transaction: the run's conditional ``UPDATE``, then its flow's, then its steps'.
On PostgreSQL, outside a transaction, the same definition is written as one statement with
data-modifying ``WITH`` clauses, and its commit is the run's only one: a worker costs two
statements per run (:func:`take`, then the end). The text is built from the transition
(columns from the models' ``_meta``, every value a parameter) once per shape and reused,
so a worker builds no SQL per run; ``tests/test_transitions.py`` runs every transition
both ways and compares the rows.

The worker's start mark (the ``start`` transition is not ``durable``) does not wait for
its commit (``synchronous_commit`` off for that transaction only). Losing it in a database
crash leaves the run ``pending``, as if no worker had taken it: the heartbeat's redelivery
handles such a run, and the body had not started before the mark returned.

Where the project lets psycopg prepare statements (``"prepare_threshold"`` in the
database's ``OPTIONS``; Django leaves it off by default, for transaction-pooling proxies),
the statements go through a cursor that binds parameters on the server, so PostgreSQL
plans each of them once per connection instead of once per run (:func:`_cursor`).
"""

# Every statement here is built from the models' _meta and the transitions' definitions;
# every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.db.models import Model

from django_dataflows.models import (
    ACTIVE_STATUSES,
    DataFlow,
    DataFlowRun,
    announce_runs_changed,
)
from django_dataflows.runs.sql import converters, has_converters
from django_dataflows.runs.transitions import Transition

#: The name of the run's ``UPDATE`` in the statement, which the flow's refers to.
_MOVED = "moved"


def _cursor(conn: BaseDatabaseWrapper) -> CursorWrapper:
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
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    raw = conn.connection
    if getattr(raw, "prepare_threshold", None) is None or conn.queries_logged:
        return conn.cursor()
    # psycopg 3 is the one with prepare_threshold.
    from django.db.backends.postgresql.base import ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg import adapters
    from psycopg.pq import Format

    conn.validate_thread_sharing()
    with conn.wrap_database_errors:
        cursor = ServerBindingCursor(raw)  # type: ignore[call-arg]  # stubs: no arguments
        # As Django's create_cursor(): datetimes in the connection's current time zone
        # (it differs from the one the connection was opened with after a settings change).
        loader = raw.adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)
        if conn.timezone != getattr(loader, "timezone", conn.timezone):
            register_tzloader(conn.timezone, cursor)
        return conn.make_cursor(cursor)  # type: ignore[arg-type]  # stubs: a DB-API cursor


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


@lru_cache(maxsize=4)
def _names(model: type[Model]) -> tuple[str, ...]:
    return tuple(field.attname for field in model._meta.concrete_fields)


def _column(model: type[Model], name: str) -> str:
    return connection.ops.quote_name(str(model._meta.get_field(name).column))  # type: ignore[union-attr]


@lru_cache(maxsize=64)
def _statement_sql(
    transition: Transition,
    field_names: tuple[str, ...],
    flow_names: tuple[str, ...],
    run_names: tuple[str, ...],
    flow_returned: tuple[str, ...],
) -> str:
    """The transition's one statement for a shape of values (built once, then reused).

    Written from the transition's definition, as :meth:`Transition.assignments`,
    :meth:`Transition.runs` and :meth:`Transition.flows` are for the ORM; the text is kept
    per shape (which fields are written), so a worker does not build SQL per run.
    """
    now = "STATEMENT_TIMESTAMP()"
    quote = connection.ops.quote_name
    runs, flows = quote(DataFlowRun._meta.db_table), quote(DataFlow._meta.db_table)
    assignments = [f"{_column(DataFlowRun, 'updated_at')} = {now}"]
    if transition.target is not None:
        assignments.append("status = %s")
    assignments += [f"{_column(DataFlowRun, name)} = {now}" for name in transition.stamps]
    assignments += [
        f"{_column(DataFlowRun, name)} = COALESCE({_column(DataFlowRun, name)}, {now})"
        for name in transition.first_stamps
    ]
    assignments += [f"{_column(DataFlowRun, name)} = NULL" for name in transition.clears]
    assignments += [f"{_column(DataFlowRun, name)} = %s" for name in field_names]
    conditions = ["id = %s", f"status IN ({', '.join(['%s'] * len(transition.sources))})"]
    conditions += [f"{_column(DataFlowRun, name)} IS NULL" for name in transition.requires_empty]
    if not transition.durable:
        conditions.append("set_config('synchronous_commit', 'off', true) IS NOT NULL")
    returning = ", ".join(_column(DataFlowRun, name) for name in run_names)
    sql = (
        f"WITH {_MOVED} AS (UPDATE {runs} SET {', '.join(assignments)} "
        f"WHERE {' AND '.join(conditions)} RETURNING {returning})"
    )
    selected = [f"{_MOVED}.{_column(DataFlowRun, name)}" for name in run_names]
    joined = ""
    if flow_names:
        flow_set = ", ".join(f"{_column(DataFlow, name)} = %s" for name in flow_names)
        flow_conditions = [f"flow.id IN (SELECT data_flow_id FROM {_MOVED})"]
        if transition.ends:
            # The statement's snapshot still sees the run active: it is left out by its id.
            active = ", ".join(["%s"] * len(ACTIVE_STATUSES))
            flow_conditions.append(
                f"NOT EXISTS (SELECT 1 FROM {runs} AS other WHERE other.data_flow_id = flow.id "
                f"AND other.status IN ({active}) AND other.id <> %s)"
            )
        flow_returning = ", ".join(f"flow.{_column(DataFlow, name)}" for name in flow_returned)
        sql += (
            f", flow AS (UPDATE {flows} AS flow SET {flow_set} "
            f"WHERE {' AND '.join(flow_conditions)} RETURNING {flow_returning})"
        )
        selected += [f"flow.{_column(DataFlow, name)}" for name in flow_returned]
        joined = f" LEFT JOIN flow ON flow.id = {_MOVED}.data_flow_id"
    if transition.ends:
        # The flow's alert state, read by the same statement (the alerts need no read).
        selected += [
            f"(SELECT {column} FROM {flows} WHERE id = {_MOVED}.data_flow_id)"
            for column in ("consecutive_failures", "overdue_episode_since")
        ]
    return f"{sql} SELECT {', '.join(selected)} FROM {_MOVED}{joined}"


def _statement(
    conn: BaseDatabaseWrapper,
    transition: Transition,
    run_id: int,
    fields: dict[str, Any] | None,
    flow_values: dict[str, Any],
    run_names: tuple[str, ...],
    flow_returned: tuple[str, ...],
) -> list[Any] | None:
    """Run the transition's statement; the row it returns (run fields, flow fields, alert state)."""
    fields = fields or {}
    for name, value in fields.items():
        if hasattr(value, "resolve_expression"):  # pragma: no cover - a programming error
            raise TypeError(f"{name}: the one-statement path writes values, not expressions")
    sql = _statement_sql(transition, tuple(fields), tuple(flow_values), run_names, flow_returned)
    params: list[Any] = [] if transition.target is None else [str(transition.target)]
    params += [_prepared(DataFlowRun, name, value, conn) for name, value in fields.items()]
    params += [run_id, *(str(status) for status in transition.sources)]
    if flow_values:
        params += [_prepared(DataFlow, name, value, conn) for name, value in flow_values.items()]
        if transition.ends:
            params += [*(str(status) for status in ACTIVE_STATUSES), run_id]
    with _cursor(conn) as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else list(row)


def _prepared(model: type[Model], name: str, value: Any, conn: BaseDatabaseWrapper) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, conn)  # type: ignore[union-attr]


@lru_cache(maxsize=16)
def _loaders(
    model: type[Model], names: tuple[str, ...], alias: str
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """The converters of the columns ``names`` that have any, by position.

    Most columns (numbers, text, timestamps) come from psycopg as they are stored: a run's
    row is not passed through some sixty converters that do nothing.
    """
    fields = [model._meta.get_field(name) for name in names]
    needed = [index for index, field in enumerate(fields) if has_converters(field, alias)]
    loads = converters(model, [fields[index].name for index in needed], alias)
    return tuple(zip(needed, loads, strict=True))


def _convert(
    model: type[Model], names: tuple[str, ...], values: list[Any], alias: str
) -> list[Any]:
    for index, load in _loaders(model, names, alias):
        values[index] = load(values[index])
    return values


@lru_cache(maxsize=4)
def _flow_values_of_start(transition: Transition) -> tuple[tuple[str, Any], ...]:
    # What a start writes on the flow does not depend on the run (its status only).
    return tuple(transition.flow_values(DataFlowRun()).items())


def take(transition: Transition, run_id: int) -> DataFlowRun | None:
    """The ``start`` transition on the run ``run_id``: the run and its flow, freshly read.

    ``None`` if the run is not pending (a duplicated or late message).
    """
    conn = connections[DEFAULT_DB_ALIAS]
    alias = conn.alias
    run_names, flow_names = _names(DataFlowRun), _names(DataFlow)
    flow_values = dict(_flow_values_of_start(transition))
    row = _statement(conn, transition, run_id, None, flow_values, run_names, flow_names)
    if row is None:
        return None
    split = len(run_names)
    taken: DataFlowRun = DataFlowRun.from_db(
        alias, run_names, _convert(DataFlowRun, run_names, row[:split], alias)
    )
    taken.data_flow = DataFlow.from_db(
        alias, flow_names, _convert(DataFlow, flow_names, row[split:], alias)
    )
    announce_runs_changed([run_id], alias)
    return taken


#: What :func:`apply_as_statement` reads back: the run's flow, and :data:`RETURNED`.
_RUN_NAMES = ("data_flow_id", *RETURNED)


def apply_as_statement(
    transition: Transition,
    run: DataFlowRun,
    *,
    fields: dict[str, Any] | None = None,
    flow_fields: dict[str, Any] | None = None,
) -> bool:
    """:func:`~django_dataflows.runs.transitions.apply` in one statement (see the module)."""
    conn = connections[DEFAULT_DB_ALIAS]
    flow_values = transition.flow_values(run, flow_fields)
    run_names = _RUN_NAMES
    flow_returned = ("id",) if flow_values else ()
    row = _statement(conn, transition, run.pk, fields, flow_values, run_names, flow_returned)
    if row is None:
        return False
    values = _convert(DataFlowRun, run_names, row[: len(run_names)], conn.alias)
    returned = dict(zip(run_names, values, strict=True))
    load_run(run, returned, fields)
    rest = row[len(run_names) :]
    if flow_values:
        flow_id, rest = rest[0], rest[1:]
        if flow_id is not None:
            load_flow(run.data_flow, flow_values)
    if transition.ends and rest[0] is not None:
        run.flow_alert_state = (rest[0], rest[1])
    announce_runs_changed([run.pk], conn.alias)
    return True
