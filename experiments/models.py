"""Experiments (what to run), attempts (one run each), their logs and the usage ledger."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from core.ids import new_id

# Fields a user sets when creating or editing an experiment; everything else is state.
SPEC_FIELDS = (
    "name", "project", "tags", "command", "script", "working_dir", "repository", "branch",
    "commit", "diff", "entry_point", "snapshot", "requirements", "python_version",
    "container_image", "container_args", "setup_script", "env", "secret_env", "parameters",
    "gpus", "gpu_type", "cpus", "memory_mb", "priority", "max_runtime_s", "retry_policy",
    "stop_signal", "stop_grace_s",
)  # fmt: skip


class Status(models.TextChoices):
    """ClearML's core statuses (closed and published are not used)."""

    CREATED = "created", "Created"
    QUEUED = "queued", "Queued"
    IN_PROGRESS = "in_progress", "In progress"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    COMPLETED = "completed", "Completed"


FINISHED = frozenset({Status.STOPPED, Status.FAILED, Status.COMPLETED})


class FailureClass(models.TextChoices):
    """Why an attempt did not complete; the retry policy is keyed by these."""

    USER_ERROR = "user_error", "User error (non-zero exit)"
    OUT_OF_MEMORY = "oom", "Out of memory"
    TIMEOUT = "timeout", "Max runtime exceeded"
    BUILD = "build", "Build (code or environment)"
    WORKER_LOST = "worker_lost", "Worker lost"
    INTERRUPTED = "interrupted", "Interrupted (spot or preemption)"
    STOPPED = "stopped", "Stopped on request"


DEFAULT_RETRY_POLICY = {FailureClass.WORKER_LOST.value: 1, FailureClass.INTERRUPTED.value: 1}


class Capability(models.IntegerChoices):
    """What running an experiment needs from a worker, as bits of a mask."""

    COMMAND = 1, "command"
    SCRIPT = 2, "script"
    GIT = 4, "git"
    SNAPSHOT = 8, "snapshot"
    CONTAINER = 16, "container"


class Experiment(models.Model):
    """A job: code, environment, command, parameters, a resource request and a status."""

    id = models.CharField(primary_key=True, max_length=32, default=new_id, editable=False)
    name = models.CharField(max_length=200)
    project = models.CharField(max_length=200, blank=True, db_index=True)
    tags = models.JSONField(default=list, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="experiments")
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments"
    )
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")

    # Code: a command (argv), a literal script, git provenance or an uploaded snapshot.
    command = models.JSONField(default=list, blank=True)
    script = models.TextField(blank=True)
    working_dir = models.CharField(max_length=1000, blank=True)
    repository = models.CharField(max_length=1000, blank=True)
    branch = models.CharField(max_length=255, blank=True)
    commit = models.CharField(max_length=64, blank=True)
    diff = models.TextField(blank=True)
    entry_point = models.CharField(max_length=1000, blank=True)
    snapshot = models.CharField(max_length=64, blank=True, help_text="sha256 of the uploaded tarball")

    # Environment.
    requirements = models.TextField(blank=True)
    python_version = models.CharField(max_length=20, blank=True)
    container_image = models.CharField(max_length=500, blank=True)
    container_args = models.JSONField(default=list, blank=True)
    setup_script = models.TextField(blank=True)
    env = models.JSONField(default=dict, blank=True)
    # {name: Fernet ciphertext} (accounts/secrets.py): write-only, names shown, values never.
    secret_env = models.JSONField(default=dict, blank=True)
    parameters = models.JSONField(default=dict, blank=True)

    # Resource request: unset means 0 GPUs and 1 CPU.
    gpus = models.FloatField(default=0)
    gpu_type = models.CharField(max_length=100, blank=True)
    cpus = models.FloatField(default=1)
    memory_mb = models.PositiveIntegerField(default=0)

    # Scheduling.
    priority = models.IntegerField(default=0)
    max_runtime_s = models.PositiveIntegerField(null=True, blank=True)
    retry_policy = models.JSONField(default=dict, blank=True)
    stop_signal = models.CharField(max_length=10, default="SIGTERM")
    stop_grace_s = models.PositiveIntegerField(default=60)

    # State.
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CREATED)
    status_reason = models.CharField(max_length=200, blank=True)
    status_message = models.CharField(max_length=500, blank=True)
    enqueue_status = models.CharField(max_length=20, choices=Status.choices, blank=True)
    queue = models.ForeignKey("queues.Queue", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    current_attempt = models.ForeignKey(
        "experiments.Attempt", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    retry_count = models.PositiveIntegerField(default=0)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_iteration = models.BigIntegerField(null=True, blank=True)
    last_metrics = models.JSONField(default=dict, blank=True)
    # ClearML's task `runtime`: notes agents keep on a task (hostname, abort-callback keys).
    runtime = models.JSONField(default=dict, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]
        indexes = [
            # The experiment list filtered by status, newest first.
            models.Index(fields=["status", "-created_at"], name="experiment_status_idx"),
            # "My experiments".
            models.Index(fields=["owner", "-created_at"], name="experiment_owner_idx"),
            # The experiment list, newest first, a cursor page at a time.
            models.Index(fields=["-created_at", "-id"], name="experiment_created_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(gpus__gte=0), name="experiment_gpus_nonnegative"),
            models.CheckConstraint(condition=models.Q(cpus__gte=0), name="experiment_cpus_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:8]})"

    @property
    def needs_mask(self) -> int:
        """The capabilities a worker must declare to run this experiment."""
        mask = 0
        if self.container_image:
            mask |= Capability.CONTAINER
        if self.snapshot:
            mask |= Capability.SNAPSHOT
        elif self.repository:
            mask |= Capability.GIT
        elif self.script:
            mask |= Capability.SCRIPT
        else:
            mask |= Capability.COMMAND
        return mask


class Attempt(models.Model):
    """One run of an experiment on one worker, fenced by its lease token."""

    id = models.CharField(primary_key=True, max_length=32, default=new_id, editable=False)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    worker = models.ForeignKey(
        "workers.Worker", null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts"
    )
    worker_name = models.CharField(max_length=200, blank=True)
    queue = models.ForeignKey("queues.Queue", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    lease_token = models.CharField(max_length=64)
    # The resource request at claim time, so free capacity is a sum over running attempts.
    gpus = models.FloatField(default=0)
    cpus = models.FloatField(default=1)
    memory_mb = models.PositiveIntegerField(default=0)
    gpu_indexes = models.JSONField(default=list, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    wait_s = models.FloatField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Status.choices, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    failure_class = models.CharField(max_length=20, choices=FailureClass.choices, blank=True)
    message = models.CharField(max_length=500, blank=True)
    # Fenced: ended by the server (lost worker, reset); every later write with its token is refused.
    fenced = models.BooleanField(default=False)
    log_head_bytes = models.BigIntegerField(default=0)
    log_tail_bytes = models.BigIntegerField(default=0)
    log_truncated = models.BooleanField(default=False)
    # What the cap dropped between the head and the tail (experiments/services.py: _store_chunks).
    log_dropped_bytes = models.BigIntegerField(default=0)
    log_dropped_lines = models.BigIntegerField(default=0)
    resource_summary = models.JSONField(default=dict, blank=True)
    frozen_requirements = models.TextField(blank=True)
    cost = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)

    class Meta:
        ordering = ["experiment_id", "number"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "number"], name="attempt_number_unique"),
        ]
        indexes = [
            # Free capacity of a worker: its running attempts.
            models.Index(
                fields=["worker"], condition=models.Q(finished_at__isnull=True), name="attempt_running_worker_idx"
            ),
            # Concurrency limit of a queue: its running attempts.
            models.Index(
                fields=["queue"], condition=models.Q(finished_at__isnull=True), name="attempt_running_queue_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}#{self.number}"


class LogChunk(models.Model):
    """A sequenced piece of an attempt's log; (attempt, seq) makes a retried batch a no-op."""

    attempt = models.ForeignKey(Attempt, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.BigIntegerField()
    text = models.TextField()
    in_tail = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["attempt_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["attempt", "seq"], name="log_chunk_seq_unique")]

    def __str__(self) -> str:
        return f"{self.attempt_id}:{self.seq}"


class UsageRecord(models.Model):
    """The usage ledger: one row per finished attempt, read by cost reports and budgets."""

    attempt = models.OneToOneField(Attempt, on_delete=models.CASCADE, related_name="usage")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    group = models.ForeignKey("auth.Group", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    project = models.CharField(max_length=200, blank=True)
    queue_name = models.CharField(max_length=100, blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    gpu_type = models.CharField(max_length=100, blank=True)
    gpu_count = models.FloatField(default=0)
    cpus = models.FloatField(default=0)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(db_index=True)
    cost = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)

    class Meta:
        ordering = ["-ended_at"]

    def __str__(self) -> str:
        return f"usage {self.attempt_id}"


class Snapshot(models.Model):
    """A tarball of a working tree (`muster run --snapshot`), stored once by its SHA-256."""

    sha256 = models.CharField(primary_key=True, max_length=64)
    size = models.PositiveBigIntegerField()
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="snapshots")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"snapshot {self.sha256[:12]} ({self.size} bytes)"
