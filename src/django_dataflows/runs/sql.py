"""Writes that read back what the database stored, in the same statement.

A transition stamps a run with the database's clock (``Now()``); the caller needs the
values the database chose (``started_at``, ``ended_at``, the generated ``duration_ms``)
without a second query. ``UPDATE … RETURNING`` gives them on PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.sql import UpdateQuery


def compiled_update(queryset: QuerySet[Any], values: dict[str, Any]) -> tuple[str, list[Any]]:
    """The ``UPDATE`` statement ``queryset.update(**values)`` would run, and its parameters.

    Compiled by Django from the same queryset and values, so the statement and the ORM
    call can never say different things.
    """
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(values)  # type: ignore[attr-defined]  # chain() made an UpdateQuery
    sql, params = query.get_compiler(queryset.db).as_sql()
    return sql, list(params)


def returning_sql(
    model: type[Model], names: Sequence[str], *, using: str = "default", alias: str = ""
) -> str:
    """The ``RETURNING`` list (or select list) of ``model``'s fields ``names``."""
    connection = connections[using]
    prefix = f"{alias}." if alias else ""
    return ", ".join(
        prefix + connection.ops.quote_name(str(model._meta.get_field(name).column))  # type: ignore[union-attr]
        for name in names
    )


def converters(model: type[Model], names: Sequence[str], using: str) -> list[Callable[[Any], Any]]:
    """Per field of ``names``: turn a raw column value into the field's Python value."""
    connection = connections[using]
    table = model._meta.db_table
    result: list[Callable[[Any], Any]] = []
    for name in names:
        column = model._meta.get_field(name).get_col(table)  # type: ignore[union-attr]
        steps = connection.ops.get_db_converters(column) + column.get_db_converters(connection)

        def convert(value: Any, steps: list[Any] = steps, column: Any = column) -> Any:
            for step in steps:
                value = step(value, column, connection)
            return value

        result.append(convert)
    return result


def has_converters(field: Any, using: str) -> bool:
    """Does a raw value of ``field``'s column need converting (a JSON document does)?"""
    connection = connections[using]
    column = field.get_col(field.model._meta.db_table)
    return bool(connection.ops.get_db_converters(column) + column.get_db_converters(connection))


def can_return_from_update(using: str) -> bool:
    """Does the database answer ``UPDATE … RETURNING``? (PostgreSQL; SQLite from 3.35.)"""
    connection = connections[using]
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        return bool(connection.Database.sqlite_version_info >= (3, 35))  # type: ignore[attr-defined]
    return False


def update_returning(
    queryset: QuerySet[Any], values: dict[str, Any], names: Sequence[str]
) -> list[dict[str, Any]]:
    """``queryset.update(**values)``, returning the fields ``names`` of each updated row.

    One statement where the database can return rows from an update; elsewhere the rows
    are read after the update (call it inside a transaction there).
    """
    model = queryset.model
    names = ["pk" if name == "pk" else name for name in names]
    fields = [model._meta.pk.name if name == "pk" else name for name in names]
    if not can_return_from_update(queryset.db):  # pragma: no cover - PostgreSQL and SQLite can
        pks = list(queryset.values_list("pk", flat=True))
        queryset.filter(pk__in=pks).update(**values)
        rows = model._default_manager.filter(pk__in=pks).values_list(*fields)
        return [dict(zip(names, row, strict=True)) for row in rows]
    sql, params = compiled_update(queryset, values)
    if not sql:
        return []
    convert = converters(model, fields, queryset.db)
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {returning_sql(model, fields, using=queryset.db)}", params)
        raw = cursor.fetchall()
    return [
        {name: load(value) for name, load, value in zip(names, convert, row, strict=True)}
        for row in raw
    ]
