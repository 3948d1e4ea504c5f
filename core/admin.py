"""Admin for the audit trail, and the read-only admin that models changed only by services use."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from core.models import AuditEvent


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """For models whose rows change only through services: look, never edit here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_label", "object_type", "object_id", "action", "message"]
    list_filter = ["object_type", "action"]
    search_fields = ["object_id", "actor_label"]
    date_hierarchy = "at"
