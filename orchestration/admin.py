"""Admin for API keys (made and revoked through the services) and the audit trail."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.http import HttpRequest

from orchestration.admin_base import ReadOnlyAdmin, admin_actor, service_action
from orchestration.models import ApiKey, AuditEvent, KeyScope, Role
from orchestration.services import apikey_create, apikey_revoke


class ApiKeyForm(forms.ModelForm[ApiKey]):
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650)

    class Meta:
        model = ApiKey
        fields = ["user", "name", "role", "scope", "allowed_queues", "worker_prefix"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ["access_key", "user", "name", "role", "scope", "created_at", "expires_at", "revoked_at"]
    list_filter = ["role", "scope"]
    search_fields = ["access_key", "name", "user__username"]
    actions = [service_action("Revoke", lambda actor, key: apikey_revoke(actor=actor, access_key=key.access_key))]
    form = ApiKeyForm

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is not None:
            return [f.name for f in ApiKey._meta.fields if f.name != "id"] + ["allowed_queues"]
        return []

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        data = form.cleaned_data
        user: User = data["user"]
        new = apikey_create(
            actor=admin_actor(request),
            user=user,
            name=data.get("name", ""),
            role=data.get("role") or Role.USER,
            scope=data.get("scope") or KeyScope.WRITE,
            expires_in_days=data.get("expires_in_days"),
            allowed_queue_ids=[q.pk for q in data.get("allowed_queues") or []],
            worker_prefix=data.get("worker_prefix", ""),
        )
        form.instance = new.key
        obj.pk = new.key.pk
        messages.warning(request, f"API key made. Copy it now, it is shown only once: {new.token}")

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """The service already stored the allowed queues."""


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_label", "object_type", "object_id", "action", "message"]
    list_filter = ["object_type", "action"]
    search_fields = ["object_id", "actor_label"]
    date_hierarchy = "at"
