"""REST endpoints for experiments (people) and attempts (agents): parse, call a service, render."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsAgent, IsHumanUser, actor_of
from core.api import KeysetPagination, NewestFirstCursor
from experiments import selectors, services
from experiments.filters import ExperimentFilter
from experiments.models import Experiment, Status
from experiments.serializers import (
    AppendAnswerSerializer,
    AttemptSerializer,
    CloneSerializer,
    EnqueueSerializer,
    ExperimentCreateSerializer,
    ExperimentPatchSerializer,
    ExperimentSerializer,
    FinishSerializer,
    LeaseSerializer,
    LogBatchSerializer,
    LogPageSerializer,
    OutcomeSerializer,
    ProgressAnswerSerializer,
    ProgressSerializer,
    RerunSerializer,
    StopSerializer,
)


def _outcome(outcome: services.Outcome, *, fresh: bool = False) -> Response:
    """The experiment as it is after the change: read again, unless the service's copy is whole (`fresh`)."""
    exp = outcome.experiment if fresh else selectors.experiment_get(outcome.experiment.pk)
    data = {"experiment": ExperimentSerializer(exp).data, "changed": outcome.changed, "warnings": outcome.warnings}
    return Response(data)


def _valid(serializer_class: type[serializers.Serializer[Any]], request: Request) -> dict[str, Any]:
    ser = serializer_class(data=request.data)
    ser.is_valid(raise_exception=True)
    return dict(ser.validated_data)


LIST_PARAMS = [
    OpenApiParameter("status", str, description="comma-separated statuses"),
    OpenApiParameter("queue", str, description="queue id or name"),
    OpenApiParameter("owner", str),
    OpenApiParameter("project", str),
    OpenApiParameter("search", str, description="name contains, or id starts with"),
]


class AttemptPages(KeysetPagination):
    """An experiment's attempts, first to last (re-runs make the list grow without bound)."""

    order = (("number", False),)


class ExperimentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Experiment]):
    """Experiments: list, create, read, edit, and the status actions."""

    serializer_class = ExperimentSerializer
    permission_classes = [IsHumanUser]
    pagination_class = NewestFirstCursor
    lookup_value_regex = "[0-9a-f]{32}"
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[Experiment]:
        if self.action == "list":
            found = ExperimentFilter(self.request.query_params, queryset=selectors.experiment_list())
            if not found.is_valid():
                raise ValidationError(found.errors)
            return cast(QuerySet[Experiment], found.qs)
        return Experiment.objects.select_related("owner", "queue")

    @extend_schema(parameters=LIST_PARAMS)
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ExperimentCreateSerializer, responses={201: OutcomeSerializer})
    def create(self, request: Request) -> Response:
        data = _valid(ExperimentCreateSerializer, request)
        group = data.pop("group", None)
        queue = data.pop("queue", None)
        outcome = services.experiment_submit(actor=actor_of(request), spec=data, group_id=group, queue_name=queue)
        outcome.experiment.owner = cast("User", request.user)  # the submitter owns it; its queue is attached
        response = _outcome(outcome, fresh=True)
        response.status_code = status.HTTP_201_CREATED
        return response

    @extend_schema(request=ExperimentPatchSerializer, responses=ExperimentSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        ser = ExperimentPatchSerializer(data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        services.experiment_update(actor=actor_of(request), experiment_id=pk, changes=dict(ser.validated_data))
        return Response(ExperimentSerializer(selectors.experiment_get(pk)).data)

    def _queue_kwargs(self, data: dict[str, Any]) -> dict[str, Any]:
        """The body's `queue`: an id or a name (services.resolve_queue tells which)."""
        ref = data.pop("queue", None)
        return {"queue_name": ref} if ref else {}

    @extend_schema(request=EnqueueSerializer, responses=OutcomeSerializer)
    @action(detail=True, methods=["post"])
    def enqueue(self, request: Request, pk: str) -> Response:
        data = _valid(EnqueueSerializer, request)
        kw = self._queue_kwargs(data)
        return _outcome(
            services.experiment_enqueue(actor=actor_of(request), experiment_id=pk, priority=data.get("priority"), **kw)
        )

    @extend_schema(request=None, responses=OutcomeSerializer)
    @action(detail=True, methods=["post"])
    def dequeue(self, request: Request, pk: str) -> Response:
        return _outcome(services.experiment_dequeue(actor=actor_of(request), experiment_id=pk))

    @extend_schema(request=StopSerializer, responses=OutcomeSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        data = _valid(StopSerializer, request)
        return _outcome(services.experiment_stop(actor=actor_of(request), experiment_id=pk, **data))

    @extend_schema(request=None, responses=OutcomeSerializer)
    @action(detail=True, methods=["post"])
    def reset(self, request: Request, pk: str) -> Response:
        return _outcome(services.experiment_reset(actor=actor_of(request), experiment_id=pk))

    @extend_schema(request=RerunSerializer, responses=OutcomeSerializer)
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str) -> Response:
        data = _valid(RerunSerializer, request)
        kw = self._queue_kwargs(data)
        return _outcome(
            services.experiment_rerun(actor=actor_of(request), experiment_id=pk, overrides=data.get("overrides"), **kw)
        )

    @extend_schema(request=CloneSerializer, responses={201: ExperimentSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request: Request, pk: str) -> Response:
        data = _valid(CloneSerializer, request)
        exp = services.experiment_clone(
            actor=actor_of(request), experiment_id=pk, overrides=data.get("overrides"), name=data.get("name")
        )
        return Response(ExperimentSerializer(selectors.experiment_get(exp.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=AttemptSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=AttemptPages, filter_backends=[])
    def attempts(self, request: Request, pk: str) -> Response:
        selectors.experiment_get(pk)
        pages = AttemptPages()
        page = pages.paginate_queryset(selectors.attempt_list(pk), request, view=self)
        return pages.get_paginated_response(AttemptSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("attempt", str, description="attempt id (default: the current one)"),
            OpenApiParameter("after", int, description="return chunks after this sequence number"),
        ],
        responses=LogPageSerializer,
    )
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        q = LogQuerySerializer(data=request.query_params)
        q.is_valid(raise_exception=True)
        exp = selectors.experiment_get(pk)
        page = selectors.log_page(
            experiment=exp, attempt_id=q.validated_data.get("attempt"), after=q.validated_data.get("after")
        )
        return Response(LogPageSerializer(page).data)


class LogQuerySerializer(serializers.Serializer[Any]):
    attempt = serializers.RegexField(r"^[0-9a-f]{32}$", required=False)
    after = serializers.IntegerField(min_value=-1, max_value=2**62, required=False)


class _AttemptView(APIView):
    permission_classes = [IsAgent]


class AttemptStartView(_AttemptView):
    @extend_schema(request=LeaseSerializer, responses=AttemptSerializer, operation_id="attempts_start")
    def post(self, request: Request, attempt_id: str) -> Response:
        data = _valid(LeaseSerializer, request)
        attempt = services.attempt_start(actor=actor_of(request), attempt_id=attempt_id, token=data["token"])
        return Response(AttemptSerializer(attempt).data)


class AttemptLogsView(_AttemptView):
    @extend_schema(request=LogBatchSerializer, responses=AppendAnswerSerializer, operation_id="attempts_logs")
    def post(self, request: Request, attempt_id: str) -> Response:
        data = _valid(LogBatchSerializer, request)
        added = services.attempt_append_logs(
            actor=actor_of(request),
            attempt_id=attempt_id,
            token=data["token"],
            chunks=[(c["seq"], c["text"]) for c in data["chunks"]],
        )
        return Response({"added": added})


class AttemptProgressView(_AttemptView):
    @extend_schema(request=ProgressSerializer, responses=ProgressAnswerSerializer, operation_id="attempts_progress")
    def post(self, request: Request, attempt_id: str) -> Response:
        data = _valid(ProgressSerializer, request)
        stop = services.attempt_progress(
            actor=actor_of(request),
            attempt_id=attempt_id,
            token=data["token"],
            iteration=data.get("iteration"),
            metrics=data.get("metrics") or {},
        )
        return Response({"stop": stop})


class AttemptFinishView(_AttemptView):
    @extend_schema(request=FinishSerializer, responses=AttemptSerializer, operation_id="attempts_finish")
    def post(self, request: Request, attempt_id: str) -> Response:
        data = _valid(FinishSerializer, request)
        attempt = services.attempt_finish(
            actor=actor_of(request),
            attempt_id=attempt_id,
            token=data.pop("token"),
            outcome=Status(data.pop("outcome")),
            **data,
        )
        return Response(AttemptSerializer(attempt).data)
