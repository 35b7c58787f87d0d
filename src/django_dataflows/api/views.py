"""API views: thin callers of the models and of :class:`~django_dataflows.executor.FlowExecutor`.

Every view sets its own schema class, pagination, filters, permissions and exception
handler, so the API behaves the same whatever the host project's DRF defaults are; only
authentication (and rendering) follow the project's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import CursorPagination as DRFCursorPagination
from rest_framework.parsers import BaseParser, FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from django_dataflows import audit
from django_dataflows.api.errors import Conflict, StrictJSONParser, exception_handler
from django_dataflows.api.filters import (
    DEFAULT_RUN_ORDERING,
    AuditEntryFilterSet,
    DataFlowFilterSet,
    DataFlowRunFilterSet,
)
from django_dataflows.api.pagination import CursorPagination
from django_dataflows.api.permissions import RUN_PERMISSION, ActionPermission
from django_dataflows.api.serializers import (
    AuditEntrySerializer,
    BackfillRequestSerializer,
    BackfillSerializer,
    DataFlowRunSerializer,
    DataFlowSerializer,
    FlowTypeSerializer,
    RunLogPageSerializer,
    RunLogQuerySerializer,
    RunLogSerializer,
    RunStatusSerializer,
    StartRunSerializer,
    StatsQuerySerializer,
    StatsSerializer,
    UpcomingQuerySerializer,
    UpcomingSerializer,
)
from django_dataflows.backends.sync import run_after_response
from django_dataflows.executor import FlowExecutor
from django_dataflows.flows import registered_flows
from django_dataflows.models import (
    AuditAction,
    AuditEntry,
    AuditSource,
    Backfill,
    DataFlow,
    DataFlowRun,
    DataFlowRunQuerySet,
    RunTrigger,
)
from django_dataflows.permissions import fields_that_make_due, run_permission_message
from django_dataflows.runlogs import LOG_PAGE_SIZE, log_lines
from django_dataflows.runs.starting import trigger_run


class Schema(AutoSchema):
    """drf-spectacular's schema, which also leaves a serializer's ``optional_fields`` out of
    ``required``: read-only fields are otherwise all promised, and ``error_backtrace`` is
    absent for users who are not staff."""

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        component: dict[str, Any] = super()._map_basic_serializer(serializer, direction)  # type: ignore[no-untyped-call]
        optional = set(getattr(serializer, "optional_fields", ()))
        if optional and "required" in component:
            component["required"] = [name for name in component["required"] if name not in optional]
        return component


def document(**kwargs: Any) -> Callable[[Any], Any]:
    """``@extend_schema`` on our own schema class, whatever the project's DEFAULT_SCHEMA_CLASS.

    drf-spectacular builds a method's schema on the class it finds on the method, else on
    DRF's ``DEFAULT_SCHEMA_CLASS``; the host project need not set that, so name ours.
    """

    def decorator(function: Any) -> Any:
        function.schema = Schema
        return extend_schema(**kwargs)(function)

    return decorator


ErrorSerializer = inline_serializer("Error", {"detail": serializers.CharField()})
CONFLICT = OpenApiResponse(ErrorSerializer, description="The state forbids it.")


class APIViewMixin:
    """What every view of this API sets for itself instead of reading the project's defaults."""

    schema = Schema()
    permission_classes: tuple[type[ActionPermission], ...] = (ActionPermission,)
    pagination_class: type[CursorPagination] | None = CursorPagination
    filter_backends: tuple[type[DjangoFilterBackend], ...] = (DjangoFilterBackend,)
    parser_classes: tuple[type[BaseParser], ...] = (StrictJSONParser, FormParser, MultiPartParser)
    action_permissions: dict[str | None, tuple[str, ...]]

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return exception_handler

    def get_serializer_context(self) -> dict[str, Any]:
        context: dict[str, Any] = super().get_serializer_context()  # type: ignore[misc]
        # List pages cap large JSON fields; a detail answer has them whole.
        context["summary"] = getattr(self, "action", None) == "list"
        return context

    def audit(
        self,
        action: str,
        *,
        data_flow: DataFlow | None = None,
        run: DataFlowRun | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record ``action`` by the request's user; call it inside the change's transaction."""
        request: Request = self.request  # type: ignore[attr-defined]
        audit.record(
            action,
            source=AuditSource.API,
            actor=request.user,
            data_flow=data_flow,
            run=run,
            details=details,
            remote_addr=audit.client_address(request),
        )


def _runs() -> DataFlowRunQuerySet:
    """Runs as the API shows them: not soft-deleted, with their flow's name and steps.

    Of the flow only the name is loaded: decoding every listed run's flow configuration
    and state cost more than the rest of the page. (``select_related`` rather than an
    annotation, which would keep the join in the paginator's ``COUNT``.)
    """
    return (
        DataFlowRun.objects.not_deleted()
        .select_related("data_flow")
        .only(*RUN_FIELDS, "data_flow__name")
        .prefetch_related("steps")
        .order_by("-created_at", "-pk")
    )


#: Every column of a run (``only()`` needs them named to narrow the flow's).
RUN_FIELDS = tuple(field.name for field in DataFlowRun._meta.concrete_fields)


def _stats_since(request: Request) -> dict[str, Any]:
    query = StatsQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


class DataFlowViewSet(APIViewMixin, viewsets.ModelViewSet):
    """Flows: CRUD, start a run, enable / disable, statistics, upcoming slots."""

    # Overdue without a query per flow; the dependencies in two queries for the page.
    queryset = DataFlow.objects.all()  # for the schema and the router; see get_queryset()
    serializer_class = DataFlowSerializer
    filterset_class = DataFlowFilterSet
    action_permissions = {
        None: ("dataflows.view_dataflow",),
        "create": ("dataflows.add_dataflow",),
        "update": ("dataflows.change_dataflow",),
        "partial_update": ("dataflows.change_dataflow",),
        "enable": ("dataflows.change_dataflow", RUN_PERMISSION),
        "disable": ("dataflows.change_dataflow",),
        "destroy": ("dataflows.delete_dataflow",),
        "start": ("dataflows.view_dataflow", RUN_PERMISSION),
        "backfill": ("dataflows.view_dataflow", RUN_PERMISSION),
        "stats": ("dataflows.view_dataflow", "dataflows.view_dataflowrun"),
    }

    def keyset_ordering(self, request: Request) -> tuple[str, bool]:
        """Pages of flows follow their names (unique, indexed)."""
        return "name", False

    def get_queryset(self) -> QuerySet[DataFlow]:
        # Overdue without a query per flow, the dependencies in two queries for the page;
        # only the flows this user may see.
        return (
            DataFlow.objects.with_overdue_since()
            .prefetch_related("upstream_flows", "downstream_flows")
            .visible_to(self.request.user)
        )

    def perform_create(self, serializer: Any) -> None:
        self._check_run_permission(None, serializer.validated_data)
        with transaction.atomic():
            data_flow = serializer.save()
            self.audit(AuditAction.FLOW_CREATED, data_flow=data_flow)

    def perform_update(self, serializer: Any) -> None:
        self._check_run_permission(serializer.instance, serializer.validated_data)
        names = list(serializer.validated_data)
        before = {name: getattr(serializer.instance, name) for name in names}
        with transaction.atomic():
            data_flow = serializer.save()
            after = {name: getattr(data_flow, name) for name in names}
            changed = audit.changed_fields(before, after)
            if changed:
                self.audit(
                    AuditAction.FLOW_CHANGED, data_flow=data_flow, details={"fields": changed}
                )

    def _check_run_permission(self, before: DataFlow | None, changes: Any) -> None:
        """Making a flow due is starting runs: it needs the run permission too."""
        fields = fields_that_make_due(before, changes)
        if fields and not self.request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied(run_permission_message(fields))

    @document(responses={204: None, 409: CONFLICT})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete the flow and its run history; refused (409) while it has an active run."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: DataFlow) -> None:
        with transaction.atomic():
            self.audit(AuditAction.FLOW_DELETED, data_flow=instance)
            instance.delete()  # FlowHasActiveRun (409) while it has an active run

    @document(
        request=StartRunSerializer,
        responses={202: DataFlowRunSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start a run now with an optional ``input``: 202 with the run (still ``pending``
        with the in-process backend, which runs it once this answer has been sent)."""
        data_flow = self.get_object()
        body = StartRunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run_after_response()
        run = trigger_run(
            data_flow,
            trigger=RunTrigger.API,
            user=request.user,
            input=body.validated_data["input"],
            on_recorded=lambda run: self.audit(AuditAction.RUN_STARTED, run=run),
        )
        return _run_response(run, request, self)

    @document(request=BackfillRequestSerializer, responses={202: BackfillSerializer})
    @action(detail=True, methods=["post"])
    def backfill(self, request: Request, pk: str | None = None) -> Response:
        """Run the flow's slots in ``[start, end)``, oldest first: 202 with the backfill.

        400 naming the problem for ``end <= start``, a flow without a schedule, more than
        10,000 slots without ``force``, or a range overlapping a running backfill.
        """
        data_flow = self.get_object()
        body = BackfillRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with transaction.atomic():
            backfill = data_flow.backfill(
                data["start"],
                data["end"],
                rerun=data["rerun"],
                user=request.user,
                force=data["force"],
            )
            self.audit(
                AuditAction.BACKFILL_STARTED, data_flow=data_flow, details=backfill.audit_details()
            )
        return Response(BackfillSerializer(backfill).data, status=status.HTTP_202_ACCEPTED)

    @document(request=None, responses=DataFlowSerializer)
    @action(detail=True, methods=["post"])
    def enable(self, request: Request, pk: str | None = None) -> Response:
        """Turn the schedule on."""
        return self._set_enabled(enabled=True)

    @document(request=None, responses=DataFlowSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, pk: str | None = None) -> Response:
        """Turn the schedule off (runs can still be started by hand)."""
        return self._set_enabled(enabled=False)

    def _set_enabled(self, *, enabled: bool) -> Response:
        data_flow = self.get_object()
        with transaction.atomic():
            if data_flow.set_enabled(enabled):
                action = AuditAction.FLOW_ENABLED if enabled else AuditAction.FLOW_DISABLED
                self.audit(action, data_flow=data_flow)
        return Response(self.get_serializer(data_flow).data)

    @document(parameters=[StatsQuerySerializer(partial=True)], responses=StatsSerializer)
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def stats(self, request: Request, pk: str | None = None) -> Response:
        """Statistics of this flow's runs (``?since=``)."""
        data_flow = self.get_object()
        query = _stats_since(request)
        return Response(StatsSerializer(data_flow.runs.stats(since=query.get("since"))).data)

    @document(parameters=[UpcomingQuerySerializer], responses=UpcomingSerializer)
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def upcoming(self, request: Request, pk: str | None = None) -> Response:
        """The next scheduled slots (``?count=``, 5 by default, at most 50)."""
        data_flow = self.get_object()
        query = UpcomingQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        moments = data_flow.upcoming_runs(query.validated_data["count"])
        return Response(UpcomingSerializer({"upcoming": moments}).data)


class DataFlowRunViewSet(
    APIViewMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Runs with their steps; soft delete; run control."""

    serializer_class = DataFlowRunSerializer
    filterset_class = DataFlowRunFilterSet
    action_permissions = {
        None: ("dataflows.view_dataflowrun",),
        "destroy": ("dataflows.delete_dataflowrun",),
        "cancel": ("dataflows.view_dataflowrun", RUN_PERMISSION),
        "pause": ("dataflows.view_dataflowrun", RUN_PERMISSION),
        "resume": ("dataflows.view_dataflowrun", RUN_PERMISSION),
        "retry": ("dataflows.view_dataflowrun", RUN_PERMISSION),
    }

    def get_queryset(self) -> QuerySet[DataFlowRun]:
        user = self.request.user
        if self.action in {"cancel", "pause", "resume", "retry", "destroy"}:
            # Run control works with the whole flow (queue, schedule, configuration).
            return DataFlowRun.objects.not_deleted().visible_to(user).select_related("data_flow")
        return _runs().visible_to(user)

    def keyset_ordering(self, request: Request) -> tuple[str, bool]:
        """Newest first, or the one field of ``?ordering=`` (validated by the filters)."""
        fields = [
            part.strip()
            for part in request.query_params.get("ordering", DEFAULT_RUN_ORDERING).split(",")
            if part.strip()
        ] or [DEFAULT_RUN_ORDERING]
        if len(fields) > 1:
            raise ValidationError({"ordering": ["Order by one field at a time."]})
        return fields[0].removeprefix("-"), fields[0].startswith("-")

    @document(responses={204: None, 409: CONFLICT})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Soft-delete a finished run (kept for audit until ``dataflows_prune``)."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: DataFlowRun) -> None:
        with transaction.atomic():
            instance.soft_delete()
            self.audit(AuditAction.RUN_DELETED, run=instance)

    @document(responses=RunStatusSerializer)
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def status(self, request: Request, pk: str | None = None) -> Response:
        """The small live view: status, progress, steps, updated_at."""
        return Response(RunStatusSerializer(self.get_object()).data)

    @document(parameters=[RunLogQuerySerializer], responses=RunLogPageSerializer)
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def logs(self, request: Request, pk: str | None = None) -> Response:
        """The run's log lines after position ``?after=`` (0: from the start), in order."""
        query = RunLogQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after: int = query.validated_data.get("after", 0)
        run = self.get_object()
        found = log_lines(run.pk, after=after)
        return Response(
            {
                "results": RunLogSerializer(found, many=True).data,
                "after": found[-1].position if found else after,
                "complete": not run.is_active and len(found) < LOG_PAGE_SIZE,
            }
        )

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel: a pending or paused run at once, a running one at its next checkpoint."""
        run = self.get_object()
        with transaction.atomic():
            run = FlowExecutor.cancel(run)
            self.audit(AuditAction.RUN_CANCELLED, run=run)
        return _run_response(run, request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Ask a running run to pause at its next checkpoint."""
        run = self.get_object()
        with transaction.atomic():
            run = FlowExecutor.pause(run)
            self.audit(AuditAction.RUN_PAUSED, run=run)
        return _run_response(run, request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Continue a paused run: it is handed to the backend again."""
        run_after_response()
        run = FlowExecutor.resume(
            self.get_object(),
            on_recorded=lambda run: self.audit(AuditAction.RUN_RESUMED, run=run),
        )
        return _run_response(run, request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Start a new run (same input, next attempt) after a failed, timed-out or cancelled
        one: 202 with the **new** run."""
        run_after_response()
        failed = self.get_object()
        run = FlowExecutor.retry(
            failed,
            user=request.user,
            on_recorded=lambda run: self.audit(
                AuditAction.RUN_RETRIED, run=run, details={"retry_of": failed.pk}
            ),
        )
        return _run_response(run, request, self)


def _run_response(run: DataFlowRun, request: Request, view: GenericAPIView) -> Response:
    """202 with the run as it is now (re-read: an asynchronous backend's worker may have
    taken it already)."""
    fresh = _runs().get(pk=run.pk)
    return Response(
        DataFlowRunSerializer(fresh, context=view.get_serializer_context()).data,
        status=status.HTTP_202_ACCEPTED,
    )


class FlowTypeListView(APIViewMixin, GenericAPIView):
    """The registered flow classes a flow can name: a plain list."""

    serializer_class = FlowTypeSerializer
    pagination_class = None
    filter_backends = ()
    action_permissions = {None: ("dataflows.view_dataflow",)}

    @document(responses=FlowTypeSerializer(many=True))
    def get(self, request: Request) -> Response:
        flow_types = [
            {
                "path": path,
                "name": flow_class.verbose_name or flow_class.__name__,
                "description": flow_class.describe(),
                "configuration_schema": flow_class.configuration_schema,
                "steps": list(flow_class.steps),
            }
            for path, flow_class in registered_flows().items()
        ]
        return Response(FlowTypeSerializer(flow_types, many=True).data)


class StatsView(APIViewMixin, GenericAPIView):
    """Statistics over every run (``?since=``, ``?flow=``)."""

    serializer_class = StatsSerializer
    pagination_class = None
    filter_backends = ()
    action_permissions = {None: ("dataflows.view_dataflowrun",)}

    @document(parameters=[StatsQuerySerializer], responses=StatsSerializer)
    def get(self, request: Request) -> Response:
        query = _stats_since(request)
        runs = DataFlowRun.objects.visible_to(request.user)
        if "flow" in query:
            if not DataFlow.objects.visible_to(request.user).filter(pk=query["flow"]).exists():
                raise ValidationError({"flow": [f"There is no data flow {query['flow']}."]})
            runs = runs.filter(data_flow_id=query["flow"])
        return Response(StatsSerializer(runs.stats(since=query.get("since"))).data)


class AuditPagination(DRFCursorPagination):
    """Newest first, 50 a page (at most 500), ``?cursor=``: no count over the whole trail."""

    ordering = ("-created_at", "-pk")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class AuditEntryViewSet(APIViewMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The audit trail (staff only): ``?flow=``, ``?actor=``, ``?action=``, ``?source=``,
    ``?after=``, ``?before=``. Staff without ``dataflows.view_auditentry`` see the entries
    of the flows they see."""

    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
    pagination_class = AuditPagination
    permission_classes = (IsAdminUser,)
    action_permissions = {None: ()}

    def get_queryset(self) -> QuerySet[AuditEntry]:
        return AuditEntry.objects.visible_to(self.request.user).select_related("actor")


class BackfillViewSet(
    APIViewMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Backfills with their progress, newest first (``?flow=``, ``?status=``); cancel."""

    serializer_class = BackfillSerializer
    filter_backends = ()
    action_permissions = {
        None: ("dataflows.view_backfill",),
        "cancel": ("dataflows.view_backfill", RUN_PERMISSION),
    }

    def keyset_ordering(self, request: Request) -> tuple[str, bool]:
        """Pages of backfills: newest first."""
        return "created_at", True

    def get_queryset(self) -> QuerySet[Backfill]:
        # Only the backfills of flows this user sees.
        visible = DataFlow.objects.visible_to(self.request.user)
        backfills = (
            Backfill.objects.filter(data_flow__in=visible)
            .select_related("data_flow")
            .order_by("-created_at", "-pk")
        )
        params = self.request.query_params
        if params.get("flow", "").isdigit():
            backfills = backfills.filter(data_flow_id=int(params["flow"]))
        if params.get("status"):
            backfills = backfills.filter(status=params["status"])
        return backfills

    @document(request=None, responses={202: BackfillSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Stop the backfill after its current run (which finishes); 409 if it has ended."""
        backfill = self.get_object()
        with transaction.atomic():
            if not backfill.cancel():
                raise Conflict(f"Backfill {backfill.pk} is {backfill.status}, not running.")
            self.audit(
                AuditAction.BACKFILL_CANCELLED,
                data_flow=backfill.data_flow,
                details=backfill.audit_details(),
            )
        return Response(BackfillSerializer(backfill).data, status=status.HTTP_202_ACCEPTED)
