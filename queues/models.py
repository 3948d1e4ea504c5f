"""Queues and their entries: one row per waiting experiment, ordered by priority then position."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower

from core.ids import new_id


class Queue(models.Model):
    """A named, ordered list of experiments waiting to run."""

    id = models.CharField(primary_key=True, max_length=32, default=new_id, editable=False)
    name = models.CharField(max_length=100)
    display_name = models.CharField(max_length=100, blank=True)
    tags = models.JSONField(default=list, blank=True)
    system_tags = models.JSONField(default=list, blank=True)
    paused = models.BooleanField(default=False)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    # Which groups may enqueue; empty means every user may.
    groups = models.ManyToManyField("auth.Group", blank=True, related_name="queues")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), name="queue_name_unique_ci"),
        ]

    def __str__(self) -> str:
        return self.name


class QueueEntry(models.Model):
    """An experiment waiting in a queue, with the request dispatch matches copied beside it."""

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="entries")
    experiment = models.OneToOneField("experiments.Experiment", on_delete=models.CASCADE, related_name="entry")
    priority = models.IntegerField(default=0)
    position = models.BigIntegerField()
    added_at = models.DateTimeField()
    # Copied from the experiment so the claim scans one index without a join.
    gpus = models.FloatField(default=0)
    gpu_type = models.CharField(max_length=100, blank=True)
    cpus = models.FloatField(default=1)
    memory_mb = models.PositiveIntegerField(default=0)
    needs = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "queue entries"
        ordering = ["queue_id", "-priority", "position"]
        indexes = [
            # The claim and every ordered read of a queue: priority first, then position, then id
            # (the tie-break every such read names), so the claim reads the index in order and
            # stops at the first entry that fits, with no sort.
            models.Index(fields=["queue", "-priority", "position", "id"], name="entry_order_idx"),
            # "Last updated" on the queue table: the newest entry of each queue, one index probe.
            models.Index(fields=["queue", "-added_at"], name="entry_added_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.queue_id}:{self.experiment_id}@{self.priority}/{self.position}"
