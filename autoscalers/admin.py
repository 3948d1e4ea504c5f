"""The admin's view of the autoscalers: apps (credentials never shown), resources, served queues,
instances and the console, read-mostly; state changes go through autoscalers/services.py."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from autoscalers.models import AutoscalerApp, Decision, Instance, Resource, ServedQueue


class ResourceInline(admin.TabularInline[Resource, AutoscalerApp]):
    model = Resource
    extra = 0
    exclude = ("spot_blocked_until", "blocked_until", "blocked_reason")


class ServedInline(admin.TabularInline[ServedQueue, AutoscalerApp]):
    model = ServedQueue
    extra = 0


@admin.register(AutoscalerApp)
class AutoscalerAppAdmin(admin.ModelAdmin[AutoscalerApp]):
    list_display = ("name", "provider", "state", "workers_prefix", "cap_day_usd", "cap_month_usd", "last_reconciled_at")
    list_filter = ("provider", "state")
    exclude = ("credentials_encrypted",)  # write-only: set through the API or the page, never shown
    readonly_fields = ("state", "error", "last_reconciled_at")
    inlines = (ResourceInline, ServedInline)


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin[Instance]):
    list_display = ("worker_name", "app", "resource", "state", "spot", "cloud_id", "requested_at", "ended_at")
    list_filter = ("state", "app")
    search_fields = ("worker_name", "cloud_id")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Decision)
class DecisionAdmin(admin.ModelAdmin[Decision]):
    list_display = ("at", "app", "kind", "message")
    list_filter = ("kind", "app")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
