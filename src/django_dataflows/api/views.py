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
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from django_dataflows.api.errors import Conflict, exception_handler
from django_dataflows.api.filters import DataFlowFilterSet, DataFlowRunFilterSet
from django_dataflows.api.permissions import RUN_PERMISSION, ActionPermission
from django_dataflows.api.serializers import (
    BackfillRequestSerializer,
    BackfillSerializer,
    DataFlowRunSerializer,
    DataFlowSerializer,
    FlowTypeSerializer,
    RunStatusSerializer,
    StartRunSerializer,
    StatsQuerySerializer,
    StatsSerializer,
    UpcomingQuerySerializer,
    UpcomingSerializer,
)
from django_dataflows.executor import FlowExecutor
from django_dataflows.flows import registered_flows
from django_dataflows.models import Backfill, DataFlow, DataFlowRun, RunTrigger, row_lock


def document(**kwargs: Any) -> Callable[[Any], Any]:
    """``@extend_schema`` on our own schema class, whatever the project's DEFAULT_SCHEMA_CLASS.

    drf-spectacular builds a method's schema on the class it finds on the method, else on
    DRF's ``DEFAULT_SCHEMA_CLASS``; the host project need not set that, so name ours.
    """

    def decorator(function: Any) -> Any:
        function.schema = AutoSchema
        return extend_schema(**kwargs)(function)

    return decorator


ErrorSerializer = inline_serializer("Error", {"detail": serializers.CharField()})
CONFLICT = OpenApiResponse(ErrorSerializer, description="The state forbids it.")


class Pagination(LimitOffsetPagination):
    """``limit`` / ``offset``: 50 by default, at most 500, answering ``{count, next, ...}``."""

    default_limit = 50
    max_limit = 500


class APIViewMixin:
    """What every view of this API sets for itself instead of reading the project's defaults."""

    schema = AutoSchema()
    permission_classes: tuple[type[ActionPermission], ...] = (ActionPermission,)
    pagination_class: type[Pagination] | None = Pagination
    filter_backends: tuple[type[DjangoFilterBackend], ...] = (DjangoFilterBackend,)
    action_permissions: dict[str | None, tuple[str, ...]]

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return exception_handler


def _runs() -> QuerySet[DataFlowRun]:
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
    queryset = DataFlow.objects.with_overdue_since().prefetch_related(
        "upstream_flows", "downstream_flows"
    )
    serializer_class = DataFlowSerializer
    filterset_class = DataFlowFilterSet
    action_permissions = {
        None: ("dataflows.view_dataflow",),
        "create": ("dataflows.add_dataflow",),
        "update": ("dataflows.change_dataflow",),
        "partial_update": ("dataflows.change_dataflow",),
        "enable": ("dataflows.change_dataflow",),
        "disable": ("dataflows.change_dataflow",),
        "destroy": ("dataflows.delete_dataflow",),
        "start": ("dataflows.view_dataflow", RUN_PERMISSION),
        "backfill": ("dataflows.view_dataflow", RUN_PERMISSION),
        "stats": ("dataflows.view_dataflow", "dataflows.view_dataflowrun"),
    }

    @document(responses={204: None, 409: CONFLICT})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete the flow and its run history; refused (409) while it has an active run."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: DataFlow) -> None:
        with transaction.atomic():
            # The same lock a trigger takes first: no run can start between check and delete.
            row_lock(DataFlow.objects.filter(pk=instance.pk)).values_list("pk").first()
            if instance.runs.active().exists():
                raise Conflict(
                    f"Data flow {instance.name!r} has an active run; cancel it or wait for it "
                    "to finish before deleting the flow."
                )
            instance.delete()

    @document(
        request=StartRunSerializer,
        responses={202: DataFlowRunSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def start(self, request: Request, pk: str | None = None) -> Response:
        """Start a run now with an optional ``input``: 202 with the run."""
        data_flow = self.get_object()
        body = StartRunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = data_flow.trigger_run(
            trigger=RunTrigger.API, user=request.user, input=body.validated_data["input"]
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
        backfill = data_flow.backfill(
            data["start"], data["end"], rerun=data["rerun"], user=request.user, force=data["force"]
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
        if data_flow.enabled != enabled:
            data_flow.enabled = enabled
            # save() moves next_run_at when the flag changes; a queryset update would not.
            data_flow.save(update_fields=["enabled", "updated_at"])
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
        if self.action in {"cancel", "pause", "resume", "retry", "destroy"}:
            # Run control works with the whole flow (queue, schedule, configuration).
            return DataFlowRun.objects.not_deleted().select_related("data_flow")
        return _runs()

    @document(responses={204: None, 409: CONFLICT})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Soft-delete a finished run (kept for audit until ``dataflows_prune``)."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: DataFlowRun) -> None:
        instance.soft_delete()

    @document(responses=RunStatusSerializer)
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def status(self, request: Request, pk: str | None = None) -> Response:
        """The small live view: status, progress, steps, updated_at."""
        return Response(RunStatusSerializer(self.get_object()).data)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel: a pending or paused run at once, a running one at its next checkpoint."""
        return _run_response(FlowExecutor.cancel(self.get_object()), request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        """Ask a running run to pause at its next checkpoint."""
        return _run_response(FlowExecutor.pause(self.get_object()), request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        """Continue a paused run: it is handed to the backend again."""
        return _run_response(FlowExecutor.resume(self.get_object()), request, self)

    @document(request=None, responses={202: DataFlowRunSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Start a new run (same input, next attempt) after a failed, timed-out or cancelled
        one: 202 with the **new** run."""
        run = FlowExecutor.retry(self.get_object(), user=request.user)
        return _run_response(run, request, self)


def _run_response(run: DataFlowRun, request: Request, view: GenericAPIView) -> Response:
    """202 with the run as it is now (re-read: the backend may already have run it)."""
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
        runs = DataFlowRun.objects.all()
        if "flow" in query:
            if not DataFlow.objects.filter(pk=query["flow"]).exists():
                raise ValidationError({"flow": [f"There is no data flow {query['flow']}."]})
            runs = runs.filter(data_flow_id=query["flow"])
        return Response(StatsSerializer(runs.stats(since=query.get("since"))).data)


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

    def get_queryset(self) -> QuerySet[Backfill]:
        backfills = Backfill.objects.select_related("data_flow").order_by("-created_at", "-pk")
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
        if not backfill.cancel():
            raise Conflict(f"Backfill {backfill.pk} is {backfill.status}, not running.")
        return Response(BackfillSerializer(backfill).data, status=status.HTTP_202_ACCEPTED)
