"""REST endpoints for workers: register, read, edit queues, drain, unregister, claim."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import MethodNotAllowed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.permissions import IsAgent, IsAnyRole, IsHumanUser, actor_of
from core.api import INT32
from experiments.models import Capability, Experiment
from experiments.selectors import RUN_FIELDS, run_spec
from workers import selectors, services
from workers.models import WORKER_NAME_RE, Worker
from workers.serializers import ReportSerializer

CAPABILITY_NAMES = {c.label: c.value for c in Capability}


class WorkerSerializer(serializers.ModelSerializer[Worker]):
    queues = serializers.SerializerMethodField()
    capabilities = serializers.SerializerMethodField()

    class Meta:
        model = Worker
        fields = [
            "name", "kind", "instance_id", "hostname", "ip", "tags", "status", "draining", "drain_reason",
            "gpu_slots", "gpus", "cpus", "memory_mb", "capabilities", "order_fairness", "agent_version",
            "timeout_s", "registered_at", "last_seen_at", "queues",
        ]  # fmt: skip
        read_only_fields = fields

    def get_queues(self, obj: Worker) -> list[dict[str, str]]:
        links = sorted(obj.queue_links.all(), key=lambda link: link.order)
        return [{"id": link.queue_id, "name": link.queue.name} for link in links]

    def get_capabilities(self, obj: Worker) -> list[str]:
        return [name for name, bit in CAPABILITY_NAMES.items() if obj.capabilities & bit]


class GpuSlotSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField(min_value=0, max_value=1024)
    model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    memory_mb = serializers.IntegerField(min_value=0, max_value=INT32, required=False)


class RegisterSerializer(serializers.Serializer[Any]):
    name = serializers.RegexField(WORKER_NAME_RE, max_length=200)
    instance_id = serializers.CharField(max_length=64, required=False, allow_blank=True)
    hostname = serializers.CharField(max_length=255, required=False, allow_blank=True)
    queues = serializers.ListField(child=serializers.CharField(max_length=100), max_length=100, required=False)
    gpu_slots = serializers.ListField(child=GpuSlotSerializer(), required=False, max_length=64)
    cpus = serializers.FloatField(min_value=0, max_value=4096, required=False)
    memory_mb = serializers.IntegerField(min_value=0, max_value=2**50, required=False)
    capabilities = serializers.ListField(
        child=serializers.ChoiceField(choices=list(CAPABILITY_NAMES)), max_length=10, required=False
    )
    agent_version = serializers.CharField(max_length=50, required=False, allow_blank=True)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False)
    order_fairness = serializers.BooleanField(required=False)
    timeout_s = serializers.IntegerField(min_value=0, max_value=86_400, required=False)


class PatchSerializer(serializers.Serializer[Any]):
    queues = serializers.ListField(child=serializers.CharField(max_length=100), max_length=100, required=False)
    drain = serializers.BooleanField(required=False)
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True)


class ClaimAttemptSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    number = serializers.IntegerField()
    token = serializers.CharField()
    queue = serializers.CharField()
    claimed_at = serializers.DateTimeField()


class RunSpecSerializer(serializers.ModelSerializer[Experiment]):
    """The experiment as an agent receives it (secrets in clear, for the run only)."""

    class Meta:
        model = Experiment
        fields = list(RUN_FIELDS)
        read_only_fields = fields


class ClaimSerializer(serializers.Serializer[Any]):
    attempt = ClaimAttemptSerializer(allow_null=True)
    experiment = RunSpecSerializer(allow_null=True)


class _HumansReadAgentsOwn(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return IsAnyRole().has_permission(request, view)


def _client_ip(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


class WorkerListView(APIView):
    """GET: every worker (people); POST: register (agent keys)."""

    def get_permissions(self) -> list[BasePermission]:
        return [IsAgent()] if self.request.method == "POST" else [IsHumanUser()]

    @extend_schema(responses=WorkerSerializer(many=True), operation_id="workers_list")
    def get(self, request: Request) -> Response:
        return Response(WorkerSerializer(selectors.worker_list(), many=True).data)

    @extend_schema(request=RegisterSerializer, responses={201: WorkerSerializer}, operation_id="workers_register")
    def post(self, request: Request) -> Response:
        ser = RegisterSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = dict(ser.validated_data)
        caps = 0
        for name in d.pop("capabilities", ["command", "script"]):
            caps |= CAPABILITY_NAMES[name]
        reg = services.Registration(
            **{k: v for k, v in d.items() if k != "gpu_slots"},
            gpu_slots=[dict(s) for s in d.get("gpu_slots", [])],
            capabilities=caps,
            ip=_client_ip(request),
        )
        worker = services.worker_register(actor=actor_of(request), reg=reg)
        return Response(
            WorkerSerializer(selectors.worker_list().get(pk=worker.pk)).data, status=status.HTTP_201_CREATED
        )


class WorkerDetailView(APIView):
    """A worker: read (people, its agent), change queues or drain, unregister (admins, its agent)."""

    permission_classes = [_HumansReadAgentsOwn]

    @extend_schema(responses=WorkerSerializer, operation_id="workers_retrieve")
    def get(self, request: Request, name: str) -> Response:
        worker = selectors.worker_for_actor(actor=actor_of(request), name=name, write=False)
        return Response(WorkerSerializer(selectors.worker_list().get(pk=worker.pk)).data)

    @extend_schema(request=PatchSerializer, responses=WorkerSerializer, operation_id="workers_partial_update")
    def patch(self, request: Request, name: str) -> Response:
        actor = actor_of(request)
        worker = selectors.worker_for_actor(actor=actor, name=name, write=True)
        ser = PatchSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        services.worker_update(actor=actor, worker=worker, **ser.validated_data)
        return Response(WorkerSerializer(selectors.worker_list().get(pk=worker.pk)).data)

    @extend_schema(responses={204: None}, operation_id="workers_destroy")
    def delete(self, request: Request, name: str) -> Response:
        actor = actor_of(request)
        worker = selectors.worker_for_actor(actor=actor, name=name, write=True)
        services.worker_unregister(actor=actor, worker=worker)
        return Response(status=status.HTTP_204_NO_CONTENT)


def claim_payload(claim: Any) -> dict[str, Any]:
    """What the agent needs to run a claim: the spec with secrets (run time only) and the lease."""
    if claim is None:
        return {"attempt": None, "experiment": None}
    exp = run_spec(claim.experiment, owner_secrets=claim.owner_secrets)
    return {
        "attempt": {
            "id": claim.attempt.pk,
            "number": claim.attempt.number,
            "token": claim.attempt.lease_token,
            "queue": claim.queue.name,
            "claimed_at": claim.attempt.claimed_at,
        },
        "experiment": exp,
    }


class WorkerClaimView(APIView):
    """Claim the next experiment this worker can run (answers at once; waiting comes with reports)."""

    permission_classes = [IsAgent]

    @extend_schema(request=None, responses=ClaimSerializer, operation_id="workers_claim")
    def post(self, request: Request, name: str) -> Response:
        raise MethodNotAllowed("POST", detail="documentation only: workers/claim_view.py serves the claim")


class ReportAnswerSerializer(serializers.Serializer[Any]):
    kill = serializers.ListField(
        child=serializers.CharField(), help_text="attempts to kill: not this worker's any more"
    )
    stop = serializers.ListField(
        child=serializers.CharField(), help_text="attempts to stop gracefully (asked by a user)"
    )
    drain = serializers.BooleanField()
    queues = serializers.ListField(child=serializers.CharField())


class WorkerReportView(APIView):
    """The heartbeat: what runs and what the machine uses; the answer says what to kill or stop."""

    # Served by the plain view in workers/report_view.py; this one only documents it (schema_urls.py).

    permission_classes = [IsAgent]

    @extend_schema(request=ReportSerializer, responses=ReportAnswerSerializer, operation_id="workers_report")
    def post(self, request: Request, name: str) -> Response:
        raise MethodNotAllowed("POST", detail="documentation only: workers/report_view.py serves the report")
