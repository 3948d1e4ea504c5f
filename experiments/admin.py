"""Admin for experiments: read here, change through the status actions (services)."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin_base import service_action
from core.admin import ReadOnlyAdmin
from experiments import services
from experiments.models import Attempt, Experiment, LogChunk, UsageRecord


@admin.register(Experiment)
class ExperimentAdmin(ReadOnlyAdmin):
    list_display = ["id", "name", "status", "owner", "queue", "priority", "created_at"]
    list_filter = ["status"]
    search_fields = ["id", "name", "project"]
    exclude = ["secret_env"]
    actions = [
        service_action("Enqueue (last queue)", lambda a, e: services.experiment_enqueue(actor=a, experiment_id=e.pk)),
        service_action("Dequeue", lambda a, e: services.experiment_dequeue(actor=a, experiment_id=e.pk)),
        service_action("Stop", lambda a, e: services.experiment_stop(actor=a, experiment_id=e.pk)),
        service_action("Reset", lambda a, e: services.experiment_reset(actor=a, experiment_id=e.pk)),
        service_action("Re-run", lambda a, e: services.experiment_rerun(actor=a, experiment_id=e.pk)),
        service_action("Clone", lambda a, e: services.experiment_clone(actor=a, experiment_id=e.pk)),
    ]


@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "experiment",
        "number",
        "worker_name",
        "claimed_at",
        "finished_at",
        "outcome",
        "failure_class",
    ]
    list_filter = ["outcome", "failure_class"]
    search_fields = ["id", "experiment__id", "worker_name"]
    exclude = ["lease_token"]


@admin.register(LogChunk)
class LogChunkAdmin(ReadOnlyAdmin):
    list_display = ["attempt", "seq", "in_tail", "created_at"]
    search_fields = ["attempt__id"]


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["attempt", "owner", "project", "queue_name", "worker_name", "gpu_count", "started_at", "ended_at"]
    date_hierarchy = "ended_at"
