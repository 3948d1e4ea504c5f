"""REST endpoints for the autoscalers (admins only: they hold cloud accounts and spend money)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import IsAdmin, actor_of
from autoscalers import billing, services
from autoscalers.models import AutoscalerApp, Decision, Instance, InstanceState, ServedQueue
from autoscalers.serializers import (
    AppSerializer,
    AppWriteSerializer,
    DecisionSerializer,
    InstanceSerializer,
    SpendSerializer,
    StateSerializer,
)
from core.errors import NotFound

RUNNING = (InstanceState.BUSY,)
IDLE = (InstanceState.IDLE, InstanceState.BOOTING, InstanceState.PENDING, InstanceState.REQUESTED)


def app_list() -> QuerySet[AutoscalerApp]:
    """Every app with its resources, served queues and machine counts (a fixed number of queries)."""
    return AutoscalerApp.objects.annotate(
        running=Count("instances", filter=Q(instances__state__in=RUNNING)),
        idle=Count("instances", filter=Q(instances__state__in=IDLE)),
    ).prefetch_related("resources", Prefetch("served", ServedQueue.objects.select_related("queue", "resource")))


def _app(pk: str) -> AutoscalerApp:
    app = app_list().filter(pk=pk).first()
    if app is None:
        raise NotFound(f"autoscaler {pk} does not exist", field="id")
    return app


class AutoscalerViewSet(viewsets.ViewSet):
    permission_classes = [IsAdmin]
    lookup_value_regex = "[0-9a-f]{32}"

    @extend_schema(responses=AppSerializer(many=True))
    def list(self, request: Request) -> Response:
        return Response(AppSerializer(app_list(), many=True).data)

    @extend_schema(request=AppWriteSerializer, responses={201: AppSerializer})
    def create(self, request: Request) -> Response:
        data = AppWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app = services.app_save(actor=actor_of(request), data=dict(data.validated_data))
        return Response(AppSerializer(_app(app.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=AppSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(AppSerializer(_app(pk)).data)

    @extend_schema(request=AppWriteSerializer, responses=AppSerializer)
    def update(self, request: Request, pk: str) -> Response:
        _app(pk)
        data = AppWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.app_save(actor=actor_of(request), data=dict(data.validated_data), app_id=pk)
        return Response(AppSerializer(_app(pk)).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        services.app_delete(actor=actor_of(request), app_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=StateSerializer, responses=AppSerializer, operation_id="autoscalers_state")
    @action(detail=True, methods=["post"])
    def state(self, request: Request, pk: str) -> Response:
        """Start (running) or stop (stopped) an app; a stopped app's machines are drained."""
        _app(pk)
        data = StateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.app_set_state(actor=actor_of(request), app_id=pk, state=data.validated_data["state"])
        return Response(AppSerializer(_app(pk)).data)

    @extend_schema(responses=AppWriteSerializer, operation_id="autoscalers_export")
    @action(detail=True, methods=["get"])
    def export(self, request: Request, pk: str) -> Response:
        """The app as the create call takes it (its JSON import), never with its credentials."""
        return Response(services.app_export(_app(pk)))

    @extend_schema(responses=InstanceSerializer(many=True), operation_id="autoscalers_instances")
    @action(detail=True, methods=["get"])
    def instances(self, request: Request, pk: str) -> Response:
        app = _app(pk)
        now = timezone.now()
        rows = list(Instance.objects.filter(app=app).select_related("resource").order_by("-requested_at")[:500])
        for row in rows:
            row.cost_usd = billing.cost(app.provider, row.hourly_price_usd, row.started_at, row.ended_at or now)  # type: ignore[attr-defined]
        return Response(InstanceSerializer(rows, many=True).data)

    @extend_schema(responses=DecisionSerializer(many=True), operation_id="autoscalers_decisions")
    @action(detail=True, methods=["get"])
    def decisions(self, request: Request, pk: str) -> Response:
        """The app's console: its latest 200 decisions, newest first."""
        return Response(DecisionSerializer(Decision.objects.filter(app=_app(pk))[:200], many=True).data)

    @extend_schema(responses=SpendSerializer, operation_id="autoscalers_spend")
    @action(detail=True, methods=["get"])
    def spend(self, request: Request, pk: str) -> Response:
        app = _app(pk)
        spent = services.app_spend(app)
        body: dict[str, Any] = {
            "today_usd": spent.today,
            "month_usd": spent.month,
            "burn_usd_per_hour": spent.burn_per_hour,
            "forecast_month_usd": spent.forecast_month,
            "cap_day_usd": app.cap_day_usd,
            "cap_month_usd": app.cap_month_usd,
        }
        return Response(SpendSerializer(body).data)

    @extend_schema(responses={200: {"type": "object", "properties": {"output": {"type": "string"}}}},
                   operation_id="autoscalers_console")  # fmt: skip
    @action(detail=True, methods=["get"], url_path=r"instances/(?P<instance_id>[0-9a-f]{32})/console")
    def console(self, request: Request, pk: str, instance_id: str) -> Response:
        """A machine's console output, as its cloud keeps it."""
        if not Instance.objects.filter(pk=instance_id, app_id=pk).exists():
            raise NotFound(f"instance {instance_id} is not a machine of this app", field="instance")
        return Response({"output": services.console_of(actor=actor_of(request), instance_id=instance_id)})
