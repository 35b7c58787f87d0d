"""Cursor pagination: pages that cost the same on page 1 and page 100,000.

A page is read on an index from the position the cursor names (keyset pagination), never
by counting or skipping rows, and stays stable while runs are inserted. The cursor is
signed and names the list it belongs to (its filters and ordering): one that was tampered
with, or that comes from another list, is a 400.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core import signing
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import F, Model, Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

CURSOR_SALT = "django_dataflows.api.cursor"


class CursorPagination(BasePagination):
    """``?cursor=`` and ``page_size`` (50 by default, at most 500): ``{next, previous, results}``.

    The view names its order with ``keyset_ordering(request) -> (field, descending)``; the
    primary key breaks ties and empty values come last either way.
    """

    cursor_query_param = "cursor"
    page_size_query_param = "page_size"
    page_size = 50
    max_page_size = 500

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: Any = None
    ) -> list[Any]:
        self.request = request
        size = self._page_size(request)
        field, descending = view.keyset_ordering(request)
        self.field, self.descending = field, descending
        model_field: Any = queryset.model._meta.get_field(field)
        if model_field.generated:  # duration_ms: nullable as its output field is
            model_field = model_field.output_field
        self.nullable = bool(model_field.null)
        self.fingerprint = _fingerprint(
            request, (self.cursor_query_param, self.page_size_query_param)
        )
        token = request.query_params.get(self.cursor_query_param)
        position, backwards = self._decode(token, queryset.model) if token else (None, False)
        queryset = queryset.order_by(*self._order(reverse=backwards))
        if position is not None:
            queryset = queryset.filter(self._after(*position, backwards=backwards))
        rows = list(queryset[: size + 1])
        more = len(rows) > size
        rows = rows[:size]
        if backwards:
            rows.reverse()
            self.has_next, self.has_previous = True, more
        else:
            self.has_next, self.has_previous = more, position is not None
        self.rows = rows
        return rows

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "next": self._link(forward=True),
                "previous": self._link(forward=False),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": ["next", "previous", "results"],
            "properties": {"next": link, "previous": link, "results": schema},
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "The position a next or previous link names.",
                "schema": {"type": "string"},
            },
            {
                "name": self.page_size_query_param,
                "required": False,
                "in": "query",
                "description": f"Results per page: {self.page_size} by default, at most "
                f"{self.max_page_size}.",
                "schema": {"type": "integer", "minimum": 1},
            },
        ]

    # -- internals ------------------------------------------------------------------------

    def _page_size(self, request: Request) -> int:
        text = request.query_params.get(self.page_size_query_param)
        if text is None:
            return self.page_size
        try:
            size = int(text)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["Enter a whole number from 1."]})
        return min(size, self.max_page_size)

    def _order(self, *, reverse: bool) -> list[Any]:
        descending = self.descending != reverse
        # Empty values come last in the list's own order, so first when read backwards.
        nulls = {"nulls_last": True} if not reverse else {"nulls_first": True}
        column = F(self.field)
        primary = column.desc(**nulls) if descending else column.asc(**nulls)
        if not self.nullable:
            primary = column.desc() if descending else column.asc()
        return [primary, "-pk" if descending else "pk"]

    def _after(self, value: Any, pk: Any, *, backwards: bool) -> Q:
        """The rows after ``(value, pk)`` in the list's order (before it, ``backwards``)."""
        later = "lt" if self.descending != backwards else "gt"
        field = self.field
        if value is None:
            same = Q(**{f"{field}__isnull": True, f"pk__{later}": pk})
            return same | Q(**{f"{field}__isnull": False}) if backwards else same
        beyond = Q(**{f"{field}__{later}": value}) | Q(**{field: value, f"pk__{later}": pk})
        if self.nullable and not backwards:
            return beyond | Q(**{f"{field}__isnull": True})
        # The same rows, with a bound the index can seek to: without it PostgreSQL reads
        # every row beyond the position (half the table for a page in the middle) to sort
        # them, instead of walking the index from the position for a page's worth.
        return Q(**{f"{field}__{later}e": value}) & beyond

    def _link(self, *, forward: bool) -> str | None:
        if forward and (not self.has_next or not self.rows):
            return None
        if not forward and (not self.has_previous or not self.rows):
            return None
        row = self.rows[-1] if forward else self.rows[0]
        value = getattr(row, self.field)
        token = signing.dumps(
            {
                "v": value.isoformat() if hasattr(value, "isoformat") else value,
                "k": row.pk,
                "b": not forward,
                "f": self.fingerprint,
            },
            salt=CURSOR_SALT,
            compress=True,
        )
        url = self.request.build_absolute_uri()
        link: str = replace_query_param(url, self.cursor_query_param, token)
        return link

    def _decode(self, token: str, model: type[Model]) -> tuple[tuple[Any, Any], bool]:
        invalid = ValidationError({self.cursor_query_param: ["Invalid cursor."]})
        try:
            data = signing.loads(token, salt=CURSOR_SALT)
            fingerprint = data["f"]
            field = model._meta.get_field(self.field)
            value = None if data["v"] is None else field.to_python(data["v"])  # type: ignore[union-attr]
            pk = model._meta.pk.to_python(data["k"])
            backwards = bool(data["b"])
        except (signing.BadSignature, DjangoValidationError, LookupError, TypeError, ValueError):
            raise invalid from None
        if fingerprint != self.fingerprint:
            raise ValidationError(
                {
                    self.cursor_query_param: [
                        "This cursor belongs to another list (other filters or ordering); "
                        "start again without it."
                    ]
                }
            )
        return (value, pk), backwards


def _fingerprint(request: Request, ignored: tuple[str, ...]) -> str:
    """What names a list: its path and query parameters, but not its position or page size."""
    items = sorted(
        (key, value)
        for key, values in request.query_params.lists()
        if key not in ignored
        for value in values
    )
    text = request.path + "?" + "&".join(f"{key}={value}" for key, value in items)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
