"""Admin for workers: drain, undrain and unregister through the worker services."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin_base import service_action
from core.admin import ReadOnlyAdmin
from workers import services
from workers.models import Worker, WorkerQueue


class WorkerQueueInline(admin.TabularInline[WorkerQueue, Worker]):
    model = WorkerQueue
    extra = 0
    can_delete = False
    readonly_fields = ["queue", "order"]

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdmin):
    list_display = ["name", "status", "hostname", "gpus", "cpus", "last_seen_at", "draining"]
    list_filter = ["status", "kind", "draining"]
    search_fields = ["name", "hostname"]
    inlines = [WorkerQueueInline]
    actions = [
        service_action("Drain", lambda a, w: services.worker_update(actor=a, worker=w, drain=True, reason="admin")),
        service_action("Undrain", lambda a, w: services.worker_update(actor=a, worker=w, drain=False)),
        service_action("Unregister", lambda a, w: services.worker_unregister(actor=a, worker=w)),
    ]
