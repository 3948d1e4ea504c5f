"""The autoscaler app as the API, the page's JSON import and the export read and write it.

One shape for create, update, import and export: the app's fields, its resources, the queues it
serves (each with its resources in the order to try) and the provider's settings, checked per
provider. Credentials are write-only: accepted here, never in any answer or export.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from rest_framework import serializers

from autoscalers.models import PREFIX_RE, AppState, AutoscalerApp, Decision, Instance, Provider
from core.api import INT32

NAME_RE = r"^[a-z0-9][a-z0-9-]{0,59}$"


class ResourceSerializer(serializers.Serializer[Any]):
    name = serializers.RegexField(NAME_RE, max_length=60, error_messages={"invalid": "a resource name is a-z 0-9 -"})
    instance_type = serializers.CharField(max_length=60, help_text="EC2 instance type, GCE machine type, or local")
    cpu_mode = serializers.BooleanField(default=False, help_text="run CPU-only: offer no GPUs")
    gpu_type = serializers.CharField(max_length=60, allow_blank=True, default="")
    gpu_count = serializers.IntegerField(min_value=0, max_value=16, default=0)
    cpus = serializers.FloatField(min_value=0.1, max_value=1024, default=2)
    memory_mb = serializers.IntegerField(min_value=0, max_value=INT32, default=0)
    spot = serializers.BooleanField(default=False, help_text="spot (AWS) or preemptible (GCP)")
    spot_rollback_after_s = serializers.IntegerField(min_value=0, max_value=86400, allow_null=True, default=None)
    spot_blackout_s = serializers.IntegerField(min_value=0, max_value=7 * 86400, default=0)
    machine_image = serializers.CharField(max_length=300, allow_blank=True, default="", help_text="AMI id or GCE image")
    disk_gb = serializers.IntegerField(min_value=8, max_value=65536, default=100)
    max_instances = serializers.IntegerField(min_value=0, max_value=1000, default=1)
    hourly_price_usd = serializers.DecimalField(
        max_digits=10,
        decimal_places=4,
        min_value=Decimal(0),
        default=Decimal(0),
        help_text="0: the price table's for the type",
    )
    min_idle = serializers.IntegerField(min_value=0, max_value=1000, default=0, help_text="a warm pool")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["min_idle"] > attrs["max_instances"]:
            raise serializers.ValidationError({"min_idle": "cannot be more than max_instances"})
        return attrs


AWS_SETTINGS = {
    "region": str, "subnets": list, "security_groups": list, "key_pair": str, "iam_instance_profile": str,
    "tags": dict, "ebs_device": str, "ebs_type": str, "launch_spec": dict, "endpoint_url": str,
}  # fmt: skip
GCP_SETTINGS = {
    "project": str, "zone": str, "subnet": str, "scopes": list, "metadata": dict, "global_metadata": dict,
    "endpoint_url": str,
}  # fmt: skip
SETTINGS = {Provider.AWS: AWS_SETTINGS, Provider.GCP: GCP_SETTINGS, Provider.LOCAL: {}}
REQUIRED = {Provider.AWS: ("region",), Provider.GCP: ("project", "zone"), Provider.LOCAL: ()}
CREDENTIALS = {
    Provider.AWS: ("access_key_id", "secret_access_key"),  # empty: the IAM role of the server's host
    Provider.GCP: ("service_account_json",),  # empty: the default service account
    Provider.LOCAL: (),
}
GIT_CREDENTIALS = ("git_user", "git_password")


class AppWriteSerializer(serializers.Serializer[Any]):
    name = serializers.RegexField(NAME_RE, max_length=60, error_messages={"invalid": "an app name is a-z 0-9 -"})
    provider = serializers.ChoiceField(choices=Provider.choices)
    workers_prefix = serializers.RegexField(PREFIX_RE, error_messages={"invalid": "a workers prefix is a-z 0-9 -"})
    polling_interval_s = serializers.IntegerField(min_value=5, max_value=86400, default=30)
    max_idle_s = serializers.IntegerField(min_value=10, max_value=7 * 86400, default=900)
    max_spinup_s = serializers.IntegerField(min_value=30, max_value=86400, default=1800)
    init_script = serializers.CharField(allow_blank=True, default="", max_length=65536, trim_whitespace=False)
    extra_agent_config = serializers.CharField(allow_blank=True, default="", max_length=65536, trim_whitespace=False)
    container_mode = serializers.BooleanField(default=False)
    default_container_image = serializers.CharField(allow_blank=True, default="", max_length=300)
    environment = serializers.DictField(child=serializers.CharField(max_length=4096, allow_blank=True), default=dict)
    files = serializers.DictField(child=serializers.CharField(max_length=65536, allow_blank=True), default=dict)
    warn_duplicate_runs = serializers.BooleanField(default=True)
    settings = serializers.DictField(default=dict, help_text="the provider's own fields (docs/autoscalers.md)")
    cap_day_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal(0), allow_null=True, default=None
    )
    cap_month_usd = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal(0), allow_null=True, default=None
    )
    resources = ResourceSerializer(many=True)
    queues = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField(max_length=60), min_length=1, max_length=20),
        help_text="queue name -> the resource names to try for it, in order",
    )
    credentials = serializers.DictField(
        child=serializers.CharField(max_length=65536, allow_blank=True),
        write_only=True,
        required=False,
        help_text="write-only: never in an answer or an export",
    )

    def validate_environment(self, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not k.replace("_", "A").isalnum() or k[:1].isdigit()]
        if bad:
            raise serializers.ValidationError(f"{bad[0]!r} is not an environment variable name")
        return value

    def validate_files(self, value: dict[str, str]) -> dict[str, str]:
        bad = [p for p in value if not p.startswith("/") or ".." in p.split("/")]
        if bad:
            raise serializers.ValidationError(f"{bad[0]!r}: a file's path is absolute, without '..'")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        provider = attrs["provider"]
        allowed = SETTINGS[provider]
        given = attrs.get("settings") or {}
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise serializers.ValidationError({"settings": f"{unknown[0]!r} is not a {provider} setting"})
        for key, kind in allowed.items():
            if key in given and not isinstance(given[key], kind):
                raise serializers.ValidationError({"settings": f"{key} must be a {kind.__name__}"})
        missing = [k for k in REQUIRED[provider] if not given.get(k)]
        if missing:
            raise serializers.ValidationError({"settings": f"{provider} needs {missing[0]}"})
        if provider == Provider.AWS and "launch_spec" in given:
            try:
                json.dumps(given["launch_spec"])
            except (TypeError, ValueError):
                raise serializers.ValidationError({"settings": "launch_spec must be a JSON object"}) from None
        creds = attrs.get("credentials") or {}
        allowed_creds = (*CREDENTIALS[provider], *GIT_CREDENTIALS)
        bad = sorted(set(creds) - set(allowed_creds))
        if bad:
            raise serializers.ValidationError({"credentials": f"{bad[0]!r} is not a {provider} credential"})
        if provider == Provider.GCP and creds.get("service_account_json"):
            try:
                json.loads(creds["service_account_json"])
            except ValueError:
                raise serializers.ValidationError({"credentials": "service_account_json is not JSON"}) from None
        names = [r["name"] for r in attrs["resources"]]
        if len(names) != len(set(names)):
            raise serializers.ValidationError({"resources": "two resources have one name"})
        if not names:
            raise serializers.ValidationError({"resources": "an app needs at least one resource"})
        for queue, order in attrs["queues"].items():
            unknown_r = [n for n in order if n not in names]
            if unknown_r:
                raise serializers.ValidationError({"queues": f"queue {queue}: no resource named {unknown_r[0]!r}"})
            if len(order) != len(set(order)):
                raise serializers.ValidationError({"queues": f"queue {queue}: a resource is listed twice"})
        if attrs.get("container_mode") and not attrs.get("default_container_image"):
            raise serializers.ValidationError(
                {"default_container_image": "container mode needs a default container image"}
            )
        return attrs


class AppSerializer(serializers.ModelSerializer[AutoscalerApp]):
    """An app as answers show it: no credentials, only whether some are set."""

    credentials_set = serializers.SerializerMethodField()
    resources = serializers.SerializerMethodField()
    queues = serializers.SerializerMethodField()
    running = serializers.IntegerField(read_only=True, default=0)
    idle = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = AutoscalerApp
        fields = [
            "id", "name", "provider", "state", "error", "workers_prefix", "polling_interval_s", "max_idle_s",
            "max_spinup_s", "init_script", "extra_agent_config", "container_mode", "default_container_image",
            "environment", "files", "warn_duplicate_runs", "settings", "cap_day_usd", "cap_month_usd",
            "credentials_set", "resources", "queues", "running", "idle", "created_at", "updated_at",
            "last_reconciled_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_credentials_set(self, obj: AutoscalerApp) -> bool:
        return bool(obj.credentials_encrypted)

    def get_resources(self, obj: AutoscalerApp) -> list[dict[str, Any]]:
        return [ResourceSerializer(r).data for r in obj.resources.all()]

    def get_queues(self, obj: AutoscalerApp) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for s in sorted(obj.served.all(), key=lambda s: (s.queue.name, s.order)):
            out.setdefault(s.queue.name, []).append(s.resource.name)
        return out


class InstanceSerializer(serializers.ModelSerializer[Instance]):
    resource = serializers.CharField(source="resource.name", read_only=True)
    cost_usd = serializers.DecimalField(max_digits=12, decimal_places=4, read_only=True)

    class Meta:
        model = Instance
        fields = [
            "id", "resource", "state", "spot", "cloud_id", "worker_name", "hourly_price_usd", "cost_usd",
            "requested_at", "started_at", "registered_at", "idle_since", "drain_started_at", "ended_at", "end_reason",
        ]  # fmt: skip
        read_only_fields = fields


class DecisionSerializer(serializers.ModelSerializer[Decision]):
    instance_id = serializers.CharField(read_only=True, allow_null=True)

    class Meta:
        model = Decision
        fields = ["id", "at", "kind", "message", "instance_id"]
        read_only_fields = fields


class SpendSerializer(serializers.Serializer[Any]):
    today_usd = serializers.DecimalField(max_digits=14, decimal_places=4)
    month_usd = serializers.DecimalField(max_digits=14, decimal_places=4)
    burn_usd_per_hour = serializers.DecimalField(max_digits=14, decimal_places=4)
    forecast_month_usd = serializers.DecimalField(max_digits=14, decimal_places=2)
    cap_day_usd = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)
    cap_month_usd = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)


class StateSerializer(serializers.Serializer[Any]):
    state = serializers.ChoiceField(choices=[AppState.RUNNING, AppState.STOPPED])
