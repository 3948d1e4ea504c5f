"""Autoscalers: apps that start agent machines when experiments wait and stop them when idle.

An app (one provider: aws, gcp or local) has resources (machine types with their own budget
in instances and an hourly price) and serves queues, each with an ordered list of resources to
try. Every machine is an Instance row, created before the cloud call (so a crash leaves a row to
retry, never an unknown machine), and every step the loop takes is a Decision, the app's console.
reference/autoscaling.md §5 has the state machine and its invariants.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from core.ids import new_id

PREFIX_RE = r"^[a-z][a-z0-9-]{0,39}$"
prefix_validator = RegexValidator(PREFIX_RE, "a workers prefix is 1-40 of a-z 0-9 -, starting with a letter")


class Provider(models.TextChoices):
    AWS = "aws", "AWS EC2"
    GCP = "gcp", "GCP Compute Engine"
    LOCAL = "local", "Local (agent processes on this server's host)"


class AppState(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    RUNNING = "running", "Running"
    ERROR = "error", "Error"


class AutoscalerApp(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_id, editable=False)
    name = models.CharField(max_length=100, unique=True)
    provider = models.CharField(max_length=10, choices=Provider.choices)
    state = models.CharField(max_length=10, choices=AppState.choices, default=AppState.STOPPED)
    error = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    workers_prefix = models.CharField(max_length=40, unique=True, validators=[prefix_validator])
    polling_interval_s = models.PositiveIntegerField(default=30, validators=[MinValueValidator(5)])
    max_idle_s = models.PositiveIntegerField(default=900, validators=[MinValueValidator(10)])
    max_spinup_s = models.PositiveIntegerField(default=1800, validators=[MinValueValidator(30)])
    # What runs on each machine: an init script before the agent, extra agent options (TOML),
    # container mode with its default container image, environment variables and files.
    init_script = models.TextField(blank=True)
    extra_agent_config = models.TextField(blank=True)
    container_mode = models.BooleanField(default=False)
    default_container_image = models.CharField(max_length=300, blank=True)
    environment = models.JSONField(default=dict, blank=True)
    files = models.JSONField(default=dict, blank=True)  # path on the machine -> content
    warn_duplicate_runs = models.BooleanField(default=True)
    # The provider's own fields (region, subnets, tags … / project, zone …), validated by
    # autoscalers/serializers.py per provider.
    settings = models.JSONField(default=dict, blank=True)
    # Write-only secrets (cloud keys, the service-account JSON, git credentials): encrypted at
    # rest with the project's secrets key; no answer, page, export or log ever holds them.
    credentials_encrypted = models.TextField(blank=True)
    # Money: caps per day and per calendar month (UTC), in USD; None: no cap.
    cap_day_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    cap_month_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_reconciled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Resource(models.Model):
    """A machine type an app may start, with its own budget in instances (ClearML's "budget")."""

    app = models.ForeignKey(AutoscalerApp, on_delete=models.CASCADE, related_name="resources")
    name = models.CharField(max_length=60)
    instance_type = models.CharField(max_length=60)  # EC2 instance type, GCE machine type, or "local"
    cpu_mode = models.BooleanField(default=False)
    gpu_type = models.CharField(max_length=60, blank=True)
    gpu_count = models.PositiveIntegerField(default=0)
    cpus = models.FloatField(default=2, validators=[MinValueValidator(0.1)])
    memory_mb = models.PositiveIntegerField(default=0)
    spot = models.BooleanField(default=False)
    spot_rollback_after_s = models.PositiveIntegerField(null=True, blank=True)  # then on-demand
    spot_blackout_s = models.PositiveIntegerField(default=0)  # after a spot failure, on-demand only
    machine_image = models.CharField(max_length=300, blank=True)  # AMI id or GCE image path
    disk_gb = models.PositiveIntegerField(default=100)
    max_instances = models.PositiveIntegerField(default=1)
    hourly_price_usd = models.DecimalField(max_digits=10, decimal_places=4, default=Decimal("0"))
    min_idle = models.PositiveIntegerField(default=0)  # a warm pool
    spot_blocked_until = models.DateTimeField(null=True, blank=True)
    blocked_until = models.DateTimeField(null=True, blank=True)  # after a capacity error
    blocked_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["app_id", "name"]
        constraints = [models.UniqueConstraint(fields=["app", "name"], name="autoscaler_resource_name_unique")]

    def __str__(self) -> str:
        return f"{self.app.name}/{self.name}"


class ServedQueue(models.Model):
    """One queue an app serves, and the resources to try for it, in order (g5 → g6 → p4d)."""

    app = models.ForeignKey(AutoscalerApp, on_delete=models.CASCADE, related_name="served")
    queue = models.ForeignKey("queues.Queue", on_delete=models.CASCADE, related_name="+")
    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="served")
    order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["app_id", "queue_id", "order"]
        constraints = [
            models.UniqueConstraint(fields=["app", "queue", "resource"], name="autoscaler_served_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.queue_id} → {self.resource_id} ({self.order})"


class InstanceState(models.TextChoices):
    REQUESTED = "requested", "Requested"
    PENDING = "pending", "Pending"
    BOOTING = "booting", "Booting"
    IDLE = "idle", "Idle"
    BUSY = "busy", "Busy"
    DRAINING = "draining", "Draining"
    TERMINATING = "terminating", "Terminating"
    TERMINATED = "terminated", "Terminated"
    FAILED = "failed", "Failed"


# A machine that may exist and bill (max_instances and money count these) …
FOOTPRINT = (
    InstanceState.REQUESTED, InstanceState.PENDING, InstanceState.BOOTING, InstanceState.IDLE,
    InstanceState.BUSY, InstanceState.DRAINING, InstanceState.TERMINATING,
)  # fmt: skip
# … and one that can serve queued work soon (demand is met by these).
CAPACITY = (InstanceState.REQUESTED, InstanceState.PENDING, InstanceState.BOOTING, InstanceState.IDLE)


class Instance(models.Model):
    id = models.CharField(primary_key=True, max_length=32, default=new_id, editable=False)
    app = models.ForeignKey(AutoscalerApp, on_delete=models.CASCADE, related_name="instances")
    resource = models.ForeignKey(Resource, on_delete=models.PROTECT, related_name="instances")
    state = models.CharField(max_length=12, choices=InstanceState.choices, default=InstanceState.REQUESTED)
    spot = models.BooleanField(default=False)
    cloud_id = models.CharField(max_length=100, blank=True)
    worker_name = models.CharField(max_length=200, unique=True)
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    hourly_price_usd = models.DecimalField(max_digits=10, decimal_places=4)
    requested_at = models.DateTimeField(auto_now_add=True)
    launch_claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)  # billing starts (the cloud's launch time)
    registered_at = models.DateTimeField(null=True, blank=True)
    idle_since = models.DateTimeField(null=True, blank=True)
    drain_started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)  # billing ends
    end_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        indexes = [models.Index(fields=["app", "state"], name="instance_app_state_idx")]

    def __str__(self) -> str:
        return self.worker_name


class Decision(models.Model):
    """One step of the loop, with its reason: the app's console."""

    app = models.ForeignKey(AutoscalerApp, on_delete=models.CASCADE, related_name="decisions")
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=20)  # launch, refuse, drain, terminate, orphan, error, …
    message = models.TextField()
    instance = models.ForeignKey(Instance, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
