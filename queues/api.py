"""REST endpoints for queues and their entries."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.permissions import AdminWritesHumanReads, IsHumanUser, actor_of
from core.api import INT32, KeysetPagination
from experiments import queueing
from queues import selectors, services
from queues.models import Queue, QueueEntry
from workers.selectors import queue_listener_counts


class QueueSerializer(serializers.ModelSerializer[Queue]):
    in_queue = serializers.IntegerField(read_only=True)
    worker_count = serializers.IntegerField(read_only=True)
    groups = serializers.SerializerMethodField()

    class Meta:
        model = Queue
        fields = [
            "id", "name", "display_name", "tags", "system_tags", "paused", "concurrency_limit", "groups",
            "in_queue", "worker_count", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_groups(self, obj: Queue) -> list[int]:
        return [g.pk for g in obj.groups.all()]


class QueueWriteSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100, trim_whitespace=False)
    display_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False)
    paused = serializers.BooleanField(required=False)
    concurrency_limit = serializers.IntegerField(min_value=1, max_value=INT32, required=False, allow_null=True)
    group_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=INT32), max_length=100, required=False
    )

    def validate_group_ids(self, value: list[int]) -> list[int]:
        found = set(Group.objects.filter(pk__in=value).values_list("pk", flat=True))
        missing = [g for g in value if g not in found]
        if missing:
            raise serializers.ValidationError(f"unknown group {missing[0]}")
        return value


class QueuePatchSerializer(QueueWriteSerializer):
    name = serializers.CharField(max_length=100, required=False, trim_whitespace=False)


class EntrySerializer(serializers.ModelSerializer[QueueEntry]):
    experiment = serializers.CharField(source="experiment_id")
    name = serializers.CharField(source="experiment.name")
    owner = serializers.CharField(source="experiment.owner.username")

    class Meta:
        model = QueueEntry
        fields = ["experiment", "name", "owner", "priority", "position", "added_at", "gpus", "cpus", "memory_mb"]
        read_only_fields = fields


class EntryPages(KeysetPagination):
    order = (("priority", True), ("position", False), ("id", False))


class MoveSerializer(serializers.Serializer[Any]):
    experiments = serializers.ListField(
        child=serializers.RegexField(r"^[0-9a-f]{32}$"), min_length=1, max_length=queueing.MAX_BULK
    )
    to = serializers.ChoiceField(choices=list(queueing.MOVE_TARGETS))
    value = serializers.CharField(
        max_length=100, required=False, help_text="index for 'position', places for 'by', queue id or name for 'queue'"
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        to, value = attrs["to"], attrs.get("value")
        if to in ("position", "by"):
            try:
                number = int(value) if value is not None else None
            except ValueError:
                raise serializers.ValidationError({"value": [f"moving to '{to}' needs an integer"]}) from None
            if number is None:
                raise serializers.ValidationError({"value": [f"moving to '{to}' needs a value"]})
            if not -INT32 <= number <= INT32:
                raise serializers.ValidationError({"value": ["out of range"]})
            attrs["number"] = number
        if to == "queue" and not value:
            raise serializers.ValidationError({"value": ["name the queue to move to"]})
        return attrs


class SelectionSerializer(serializers.Serializer[Any]):
    experiments = serializers.ListField(
        child=serializers.RegexField(r"^[0-9a-f]{32}$"), min_length=1, max_length=queueing.MAX_BULK
    )


class CountSerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField()


class QueueViewSet(viewsets.GenericViewSet[Queue]):
    """Queues: everyone reads; admins create, rename, pause, limit, clear and delete."""

    serializer_class = QueueSerializer
    permission_classes = [AdminWritesHumanReads]
    lookup_value_regex = "[0-9a-f]{32}"
    filter_backends: list[Any] = []
    pagination_class = None

    def get_queryset(self) -> QuerySet[Queue]:
        return selectors.queue_list(queue_listener_counts()).prefetch_related("groups")

    def list(self, request: Request) -> Response:
        return Response(QueueSerializer(self.get_queryset(), many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(QueueSerializer(selectors.queue_get(pk, queue_listener_counts())).data)

    @extend_schema(request=QueueWriteSerializer, responses={201: QueueSerializer})
    def create(self, request: Request) -> Response:
        ser = QueueWriteSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        queue = services.queue_create(actor=actor_of(request), **{**data, "group_ids": data.get("group_ids", [])})
        return Response(
            QueueSerializer(selectors.queue_get(queue.pk, queue_listener_counts())).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(request=QueuePatchSerializer, responses=QueueSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        ser = QueuePatchSerializer(data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        services.queue_update(actor=actor_of(request), queue_id=pk, changes=dict(ser.validated_data))
        return Response(QueueSerializer(selectors.queue_get(pk, queue_listener_counts())).data)

    # 200 with how many waiting experiments went back (the schema said 204 and no body before).
    @extend_schema(responses={200: CountSerializer})
    def destroy(self, request: Request, pk: str) -> Response:
        return Response({"count": queueing.queue_delete(actor=actor_of(request), queue_id=pk)})

    @extend_schema(request=None, responses=CountSerializer)
    @action(detail=True, methods=["post"])
    def clear(self, request: Request, pk: str) -> Response:
        return Response({"count": queueing.queue_clear(actor=actor_of(request), queue_id=pk)})

    @extend_schema(request=None, responses=QueueSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        services.queue_set_paused(actor=actor_of(request), queue_id=pk, paused=True)
        return Response(QueueSerializer(selectors.queue_get(pk, queue_listener_counts())).data)

    @extend_schema(request=None, responses=QueueSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        services.queue_set_paused(actor=actor_of(request), queue_id=pk, paused=False)
        return Response(QueueSerializer(selectors.queue_get(pk, queue_listener_counts())).data)

    @extend_schema(responses=EntrySerializer(many=True))
    @action(detail=True, methods=["get"], permission_classes=[IsHumanUser], pagination_class=EntryPages)
    def entries(self, request: Request, pk: str) -> Response:
        selectors.queue_get(pk)
        paginator = EntryPages()
        rows = paginator.paginate_queryset(selectors.queue_entries(pk), request, self)
        return paginator.get_paginated_response(EntrySerializer(rows, many=True).data)

    @extend_schema(request=MoveSerializer, responses=CountSerializer)
    @action(detail=True, methods=["post"], url_path="entries/move", permission_classes=[IsHumanUser])
    def move(self, request: Request, pk: str) -> Response:
        ser = MoveSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        moved = queueing.queue_entries_move(
            actor=actor_of(request),
            queue_id=pk,
            experiment_ids=d["experiments"],
            to=d["to"],
            value=d.get("number"),
            target_queue=d.get("value") if d["to"] == "queue" else None,
        )
        return Response({"count": len(moved)})

    @extend_schema(request=SelectionSerializer, responses=CountSerializer)
    @action(detail=True, methods=["post"], url_path="entries/dequeue", permission_classes=[IsHumanUser])
    def dequeue(self, request: Request, pk: str) -> Response:
        ser = SelectionSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        count = queueing.queue_entries_dequeue(
            actor=actor_of(request), queue_id=pk, experiment_ids=ser.validated_data["experiments"]
        )
        return Response({"count": count})
