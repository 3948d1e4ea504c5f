"""Experiment and attempt shapes for the API, with a limit on every input."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from rest_framework import serializers

from core.api import INT32, LimitedJSONField
from experiments.models import Attempt, Experiment, Status
from experiments.text import clean_text

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MASK = "********"


def _text(max_length: int, **kw: Any) -> serializers.CharField:
    return serializers.CharField(max_length=max_length, allow_blank=True, required=False, trim_whitespace=False, **kw)


class EnvField(serializers.DictField):
    """Environment variables: valid names, bounded count and sizes."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            child=serializers.CharField(max_length=32_768, allow_blank=True, trim_whitespace=False),
            required=False,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> dict[str, str]:
        value: dict[str, str] = super().to_internal_value(data)
        if len(value) > 200:
            raise serializers.ValidationError("at most 200 variables")
        for name in value:
            if not ENV_NAME.match(name):
                raise serializers.ValidationError(f"{name[:50]!r} is not a valid variable name")
        return value


class ExperimentSpecSerializer(serializers.Serializer[Any]):
    """What a person sets on an experiment; state is read-only and changes through actions."""

    name = serializers.CharField(max_length=200)
    project = _text(200)
    tags = serializers.ListField(child=serializers.CharField(max_length=100), max_length=50, required=False)
    command = serializers.ListField(
        child=serializers.CharField(max_length=8192, allow_blank=True, trim_whitespace=False),
        max_length=1000,
        required=False,
    )
    script = _text(1_000_000)
    working_dir = _text(1000)
    repository = _text(1000)
    branch = _text(255)
    commit = _text(64)
    diff = _text(2_000_000)
    entry_point = _text(1000)
    snapshot = serializers.RegexField(r"^([0-9a-f]{64})?$", required=False, allow_blank=True)
    requirements = _text(1_000_000)
    python_version = serializers.RegexField(r"^(\d+(\.\d+){0,2})?$", max_length=20, required=False, allow_blank=True)
    container_image = _text(500)
    container_args = serializers.ListField(
        child=serializers.CharField(max_length=1000, trim_whitespace=False), max_length=100, required=False
    )
    setup_script = _text(100_000)
    env = EnvField()
    secret_env = EnvField()
    parameters = LimitedJSONField(required=False)
    gpus = serializers.FloatField(min_value=0, max_value=1024, required=False)
    gpu_type = _text(100)
    cpus = serializers.FloatField(min_value=0, max_value=4096, required=False)
    memory_mb = serializers.IntegerField(min_value=0, max_value=INT32, required=False)
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, required=False)
    max_runtime_s = serializers.IntegerField(min_value=1, max_value=INT32, required=False, allow_null=True)
    retry_policy = serializers.DictField(child=serializers.IntegerField(min_value=0, max_value=100), required=False)
    stop_signal = serializers.CharField(max_length=10, required=False)
    stop_grace_s = serializers.IntegerField(min_value=0, max_value=86_400, required=False)

    def validate_parameters(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("parameters are a JSON object")
        return value

    def validate_gpu_type(self, value: str) -> str:
        return value.strip().lower()


class ExperimentCreateSerializer(ExperimentSpecSerializer):
    group = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=INT32)
    queue = serializers.CharField(
        max_length=100, required=False, help_text="enqueue at once to this queue (id or name)"
    )


class ExperimentPatchSerializer(ExperimentSpecSerializer):
    name = serializers.CharField(max_length=200, required=False)


class ExperimentSerializer(serializers.ModelSerializer[Experiment]):
    owner = serializers.CharField(source="owner.username", read_only=True)
    queue = serializers.CharField(source="queue_id", read_only=True, allow_null=True)
    queue_name = serializers.SerializerMethodField()
    current_attempt = serializers.CharField(source="current_attempt_id", read_only=True, allow_null=True)
    secret_env = serializers.SerializerMethodField()
    parent_id = serializers.CharField(read_only=True, allow_null=True)
    # "" until it is first enqueued (the status a dequeue returns it to)
    enqueue_status = serializers.ChoiceField(choices=Status.choices, allow_blank=True, read_only=True)

    class Meta:
        model = Experiment
        fields = [
            "id", "name", "project", "tags", "owner", "group", "parent_id",
            "command", "script", "working_dir", "repository", "branch", "commit", "diff", "entry_point",
            "snapshot", "requirements", "python_version", "container_image", "container_args",
            "setup_script", "env", "secret_env", "parameters", "gpus", "gpu_type", "cpus", "memory_mb",
            "priority", "max_runtime_s", "retry_policy", "stop_signal", "stop_grace_s",
            "status", "status_reason", "status_message", "enqueue_status", "queue", "queue_name",
            "current_attempt", "retry_count", "created_at", "updated_at", "queued_at", "started_at",
            "finished_at", "last_iteration", "last_metrics", "exit_code",
        ]  # fmt: skip
        read_only_fields = fields

    def get_secret_env(self, obj: Experiment) -> dict[str, str]:
        """Secret values never leave the server except to the agent running the experiment."""
        return dict.fromkeys(obj.secret_env, MASK)

    def get_queue_name(self, obj: Experiment) -> str | None:
        return obj.queue.name if obj.queue_id and obj.queue else None


class AttemptSerializer(serializers.ModelSerializer[Attempt]):
    worker = serializers.CharField(source="worker_name", read_only=True)
    queue = serializers.CharField(source="queue_id", read_only=True, allow_null=True)

    class Meta:
        model = Attempt
        fields = [
            "id", "number", "worker", "queue", "gpus", "cpus", "memory_mb", "gpu_indexes", "queued_at",
            "claimed_at", "started_at", "finished_at", "wait_s", "outcome", "exit_code", "failure_class",
            "message", "fenced", "log_truncated", "resource_summary", "frozen_requirements", "cost",
        ]  # fmt: skip
        read_only_fields = fields


class EnqueueSerializer(serializers.Serializer[Any]):
    queue = serializers.CharField(max_length=100, required=False, help_text="queue id or name")
    priority = serializers.IntegerField(min_value=-1000, max_value=1000, required=False)


class RerunSerializer(serializers.Serializer[Any]):
    queue = serializers.CharField(max_length=100, required=False)
    overrides = LimitedJSONField(required=False, help_text="parameters (or spec fields) to change in a clone")

    def validate_overrides(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("overrides are a JSON object")
        return value


class CloneSerializer(RerunSerializer):
    name = serializers.CharField(max_length=200, required=False)


class StopSerializer(serializers.Serializer[Any]):
    message = serializers.CharField(max_length=500, required=False, allow_blank=True)


class OutcomeSerializer(serializers.Serializer[Any]):
    experiment = ExperimentSerializer()
    changed = serializers.BooleanField()
    warnings = serializers.ListField(child=serializers.CharField())


class LogLineSerializer(serializers.Serializer[Any]):
    seq = serializers.IntegerField()
    text = serializers.CharField()


class LogWindowSerializer(serializers.Serializer[Any]):
    """Where a capped log's middle was, as stored now (selectors.LogWindow)."""

    head_end = serializers.IntegerField(allow_null=True, help_text="the head's last chunk")
    kept_from = serializers.IntegerField(allow_null=True, help_text="the first tail chunk kept (null: none)")
    head_text = serializers.CharField(allow_blank=True, help_text="the head's last chunk as stored now")
    kept_text = serializers.CharField(allow_blank=True, help_text="the first kept tail chunk as stored now")
    marker = serializers.CharField(help_text="the line that stands where the middle was")
    dropped_bytes = serializers.IntegerField()
    dropped_lines = serializers.IntegerField()


class LogPageSerializer(serializers.Serializer[Any]):
    attempt = serializers.CharField(allow_null=True)
    truncated = serializers.BooleanField()
    chunks = LogLineSerializer(many=True)
    next_after = serializers.IntegerField(allow_null=True)
    window = LogWindowSerializer(
        allow_null=True,
        help_text="for a capped log: a follower drops the chunks it showed after head_end and before "
        "kept_from, puts the marker there, and so shows what is stored",
    )


# Agent side ------------------------------------------------------------------


class LeaseSerializer(serializers.Serializer[Any]):
    token = serializers.CharField(max_length=64)


class LogChunkInSerializer(serializers.Serializer[Any]):
    seq = serializers.IntegerField(min_value=0, max_value=2**62)
    # Invalid text is repaired, not refused: NULs and surrogates become U+FFFD in the service.
    text = serializers.CharField(max_length=1_048_576, allow_blank=True, trim_whitespace=False)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            data = {**data, "text": clean_text(data["text"])}
        return super().to_internal_value(data)


class LogBatchSerializer(LeaseSerializer):
    chunks = serializers.ListField(child=LogChunkInSerializer(), max_length=1000)

    def validate_chunks(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = sum(len(c["text"].encode()) for c in value)
        if size > settings.MAX_LOG_BATCH_BYTES:
            raise serializers.ValidationError(f"a batch carries at most {settings.MAX_LOG_BATCH_BYTES} bytes of text")
        return value


class ProgressSerializer(LeaseSerializer):
    iteration = serializers.IntegerField(min_value=0, max_value=2**62, required=False, allow_null=True)
    metrics = serializers.DictField(child=serializers.FloatField(), required=False)

    def validate_metrics(self, value: dict[str, float]) -> dict[str, float]:
        if len(value) > 200:
            raise serializers.ValidationError("at most 200 scalars per report")
        for key in value:
            if len(key) > 200 or "\x00" in key:
                raise serializers.ValidationError("scalar names have at most 200 characters and no NUL")
        return value


class FinishSerializer(LeaseSerializer):
    outcome = serializers.ChoiceField(choices=[Status.COMPLETED, Status.FAILED, Status.STOPPED])
    exit_code = serializers.IntegerField(min_value=-INT32, max_value=INT32, required=False, allow_null=True)
    failure_class = serializers.ChoiceField(
        choices=["", "user_error", "oom", "timeout", "build", "worker_lost", "interrupted", "stopped"], required=False
    )
    message = serializers.CharField(max_length=500, required=False, allow_blank=True)
    resource_summary = LimitedJSONField(required=False)
    frozen_requirements = _text(1_000_000)


class ProgressAnswerSerializer(serializers.Serializer[Any]):
    stop = serializers.BooleanField()


class AppendAnswerSerializer(serializers.Serializer[Any]):
    added = serializers.IntegerField()
