"""Read-only time series endpoints: a worker, an experiment's current attempt, a queue, the fleet."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsAnyRole, IsHumanUser, actor_of
from experiments.selectors import attempt_of
from queues.selectors import queue_get
from workers import selectors
from workers.timeseries import Series, parse_span, series

SPAN = OpenApiParameter("span", str, description="3h, 6h, 1d, 7d, 30d (10 minutes to 31 days; default 3h)")


class SeriesSerializer(serializers.Serializer[Any]):
    kind = serializers.CharField()
    key = serializers.CharField()
    span_s = serializers.IntegerField()
    level = serializers.IntegerField(help_text="0: raw rows; else the rollup level in seconds")
    bucket_s = serializers.IntegerField()
    points = serializers.ListField(child=serializers.DictField(), help_text="[{at, ...values}] oldest first")


def _answer(s: Series) -> Response:
    return Response(SeriesSerializer(s).data)


class WorkerStatsView(APIView):
    permission_classes = [IsAnyRole]

    @extend_schema(parameters=[SPAN], responses=SeriesSerializer, operation_id="workers_stats")
    def get(self, request: Request, name: str) -> Response:
        worker = selectors.worker_for_actor(actor=actor_of(request), name=name, write=False)
        return _answer(series("worker", worker.name, parse_span(request.query_params.get("span"))))


class QueueStatsView(APIView):
    permission_classes = [IsHumanUser]

    @extend_schema(parameters=[SPAN], responses=SeriesSerializer, operation_id="queues_stats")
    def get(self, request: Request, pk: str) -> Response:
        queue = queue_get(pk)
        return _answer(series("queue", queue.pk, parse_span(request.query_params.get("span"))))


class ExperimentStatsView(APIView):
    permission_classes = [IsHumanUser]

    @extend_schema(
        parameters=[SPAN, OpenApiParameter("attempt", str, description="default: the current attempt")],
        responses=SeriesSerializer,
        operation_id="experiments_stats",
    )
    def get(self, request: Request, pk: str) -> Response:
        attempt_id = attempt_of(pk, request.query_params.get("attempt"))
        return _answer(series("attempt", attempt_id, parse_span(request.query_params.get("span"))))


class FleetStatsView(APIView):
    permission_classes = [IsHumanUser]

    @extend_schema(parameters=[SPAN], responses=SeriesSerializer, operation_id="fleet_stats")
    def get(self, request: Request) -> Response:
        return _answer(series("fleet", "", parse_span(request.query_params.get("span"))))
