"""Admin for queues: every edit, delete and action goes through the queue services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.admin_base import admin_actor, service_action
from core.admin import ReadOnlyAdmin
from experiments import queueing
from queues import services
from queues.models import Queue, QueueEntry


class QueueForm(forms.ModelForm[Queue]):
    class Meta:
        model = Queue
        fields = ["name", "display_name", "tags", "paused", "concurrency_limit", "groups"]


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin[Queue]):
    form = QueueForm
    list_display = ["name", "display_name", "paused", "concurrency_limit", "created_at"]
    search_fields = ["name"]
    actions = [
        service_action("Pause", lambda a, q: services.queue_set_paused(actor=a, queue_id=q.pk, paused=True)),
        service_action("Resume", lambda a, q: services.queue_set_paused(actor=a, queue_id=q.pk, paused=False)),
        service_action("Clear", lambda a, q: queueing.queue_clear(actor=a, queue_id=q.pk)),
    ]

    def save_model(self, request: HttpRequest, obj: Queue, form: Any, change: bool) -> None:
        data = dict(form.cleaned_data)
        groups = [g.pk for g in data.pop("groups", [])]
        actor = admin_actor(request)
        if change:
            queue = services.queue_update(actor=actor, queue_id=obj.pk, changes={**data, "group_ids": groups})
        else:
            queue = services.queue_create(actor=actor, group_ids=groups, **data)
        form.instance = queue
        obj.pk = queue.pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The service already stored the groups."""

    def delete_model(self, request: HttpRequest, obj: Queue) -> None:
        queueing.queue_delete(actor=admin_actor(request), queue_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        actor = admin_actor(request)
        for queue in queryset:
            queueing.queue_delete(actor=actor, queue_id=queue.pk)


@admin.register(QueueEntry)
class QueueEntryAdmin(ReadOnlyAdmin):
    list_display = ["queue", "experiment", "priority", "position", "added_at"]
    list_filter = ["queue"]
