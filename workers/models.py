"""Workers: registered agents, their capacity and the ordered queues they listen to."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

WORKER_NAME_RE = r"^[A-Za-z0-9_.,:@-]{1,200}$"
worker_name_validator = RegexValidator(WORKER_NAME_RE, "worker names use only A-Z a-z 0-9 _ . , : @ -")


class WorkerStatus(models.TextChoices):
    IDLE = "idle", "Idle"
    BUSY = "busy", "Busy"
    DRAINING = "draining", "Draining"
    UNRESPONSIVE = "unresponsive", "Unresponsive"
    LOST = "lost", "Lost"


class WorkerKind(models.TextChoices):
    MUSTER = "muster", "Muster agent"
    CLEARML = "clearml", "clearml-agent"


def worker_timeout_s(timeout_s: int, report_interval_s: float) -> float:
    """Seconds of silence before a worker is unresponsive (lost after twice that): the one rule.

    Its own timeout when it states one; else WORKER_TIMEOUT, or three of its report intervals
    when it reports less often (clearml-agent: every 30 s, and it states none). DESIGN §5.
    """
    return float(timeout_s or max(settings.WORKER_TIMEOUT_S, 3 * max(report_interval_s, 0.0)))


class Worker(models.Model):
    """One registered agent, listening to an ordered list of queues, with a capacity."""

    name = models.CharField(max_length=200, unique=True, validators=[worker_name_validator])
    kind = models.CharField(max_length=10, choices=WorkerKind.choices, default=WorkerKind.MUSTER)
    instance_id = models.CharField(max_length=64, blank=True)
    hostname = models.CharField(max_length=255, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    tags = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=20, choices=WorkerStatus.choices, default=WorkerStatus.IDLE)
    draining = models.BooleanField(default=False)
    drain_reason = models.CharField(max_length=200, blank=True)
    # Capacity: GPU slots ([{index, model, memory_mb}]), cores and memory.
    gpu_slots = models.JSONField(default=list, blank=True)
    gpus = models.FloatField(default=0)
    cpus = models.FloatField(default=1)
    memory_mb = models.PositiveBigIntegerField(default=0)
    capabilities = models.PositiveIntegerField(default=0)
    # What running attempts use, kept by the claim and by attempt ends under the worker's
    # row lock, so a claim reads free capacity from one row; re-registration recomputes it.
    used_gpus = models.FloatField(default=0)
    used_cpus = models.FloatField(default=0)
    used_memory_mb = models.BigIntegerField(default=0)
    order_fairness = models.BooleanField(default=False)
    last_queue = models.ForeignKey("queues.Queue", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    agent_version = models.CharField(max_length=50, blank=True)
    timeout_s = models.PositiveIntegerField(default=0, help_text="0 means WORKER_TIMEOUT")
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="workers"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    registered_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    # last_seen_at plus the timeout: "live" is one indexed comparison, whatever each timeout is.
    live_until = models.DateTimeField(db_index=True)
    # Lower-cased GPU model names and their words, matched against an experiment's gpu_type.
    gpu_models = models.JSONField(default=list, blank=True)
    # The queue list the agent asked for; while it is unchanged, queues edited here persist.
    declared_queues = models.JSONField(default=list, blank=True)
    # When the previous report arrived: an attempt claimed before it and missing from the
    # next report was lost on its way to the agent (a dropped claim response).
    previous_report_at = models.DateTimeField(null=True, blank=True)
    report_interval_s = models.FloatField(default=0)
    # ClearML's worker runtime properties ([{key, value, expiry?}]), such as force=on/off.
    runtime_properties = models.JSONField(default=list, blank=True)
    queues = models.ManyToManyField("queues.Queue", through="WorkerQueue", related_name="workers")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_timeout_s(self) -> float:
        return worker_timeout_s(self.timeout_s, self.report_interval_s)


class WorkerQueue(models.Model):
    """A queue a worker listens to, at its place in the worker's order."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="queue_links")
    queue = models.ForeignKey("queues.Queue", on_delete=models.CASCADE, related_name="worker_links")
    order = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["worker_id", "order"]
        constraints = [models.UniqueConstraint(fields=["worker", "queue"], name="worker_queue_unique")]

    def __str__(self) -> str:
        return f"{self.worker_id}->{self.queue_id}#{self.order}"


class WorkerStat(models.Model):
    """One report's machine stats, averaged by the agent over its report interval."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="stats")
    at = models.DateTimeField()
    cpu_percent = models.FloatField(null=True)
    cpu_per_core = models.JSONField(default=list)
    memory_used_mb = models.FloatField(null=True)
    memory_free_mb = models.FloatField(null=True)
    # [{index, util, memory_used_mb, memory_free_mb, temperature_c, ecc_errors}] for the agent's own GPUs.
    gpus = models.JSONField(default=list)
    network_rx_bps = models.FloatField(null=True)
    network_tx_bps = models.FloatField(null=True)
    disk_read_bps = models.FloatField(null=True)
    disk_write_bps = models.FloatField(null=True)
    disk_free_mb = models.FloatField(null=True)
    running = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["worker_id", "at"]
        indexes = [
            # A worker's resource graph: its samples in a time range.
            models.Index(fields=["worker", "at"], name="workerstat_worker_at_idx"),
            models.Index(fields=["at"], name="workerstat_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.worker_id}@{self.at:%H:%M:%S}"


class AttemptStat(models.Model):
    """What one attempt's process tree used during one report interval."""

    attempt = models.ForeignKey("experiments.Attempt", on_delete=models.CASCADE, related_name="stats")
    at = models.DateTimeField()
    cpu_percent = models.FloatField(null=True)
    memory_mb = models.FloatField(null=True)
    gpu_util = models.FloatField(null=True)
    gpu_memory_mb = models.FloatField(null=True)

    class Meta:
        ordering = ["attempt_id", "at"]
        indexes = [models.Index(fields=["attempt", "at"], name="attemptstat_attempt_at_idx")]

    def __str__(self) -> str:
        return f"{self.attempt_id}@{self.at:%H:%M:%S}"


class Rollup(models.Model):
    """A time series point: a raw sample (level 0: queues and the fleet) or an aggregate of a bucket.

    kind/key name the series: ("worker", name), ("attempt", id), ("queue", id), ("fleet", "").
    level is the bucket length in seconds (60, 600, 3600) and `at` the bucket start; values
    are averages weighted by `samples`, except keys ending in _max (maxima).
    """

    kind = models.CharField(max_length=10)
    key = models.CharField(max_length=200)
    level = models.PositiveIntegerField()
    at = models.DateTimeField()
    samples = models.PositiveIntegerField(default=1)
    values = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "key", "level", "at"], name="rollup_series_point_unique")
        ]
        indexes = [models.Index(fields=["level", "at"], name="rollup_level_at_idx")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}/{self.level}@{self.at:%Y-%m-%d %H:%M}"
