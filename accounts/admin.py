"""Admin for API keys and per-user secrets (made, revoked and set through the services)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.http import HttpRequest

from accounts.admin_base import admin_actor, service_action
from accounts.models import ApiKey, KeyScope, Role, UserSecret
from accounts.secrets import secret_delete, secret_set
from accounts.services import apikey_create, apikey_revoke


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


class UserSecretForm(forms.ModelForm[UserSecret]):
    value = forms.CharField(widget=forms.PasswordInput(render_value=False), help_text="never shown again")

    class Meta:
        model = UserSecret
        fields = ["owner", "name"]


@admin.register(UserSecret)
class UserSecretAdmin(admin.ModelAdmin[UserSecret]):
    """Per-user secrets: set or replaced through the service (encrypted), never displayed."""

    list_display = ["owner", "name", "updated_at"]
    search_fields = ["name", "owner__username"]
    form = UserSecretForm
    actions = [
        service_action("Delete", lambda actor, secret: secret_delete(actor=actor, name=secret.name, owner=secret.owner))
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["owner", "name"] if obj is not None else []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the Delete action goes through the service (and the audit trail)

    def save_model(self, request: HttpRequest, obj: UserSecret, form: Any, change: bool) -> None:
        data = form.cleaned_data
        owner = obj.owner if change else data["owner"]
        name = obj.name if change else data["name"]
        saved = secret_set(actor=admin_actor(request), name=name, value=data["value"], owner=owner)
        obj.pk = saved.pk
