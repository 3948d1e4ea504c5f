"""Admin for API keys (made and revoked through the services) and the audit trail."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.http import HttpRequest

from orchestration.actions import action_set_secret
from orchestration.admin_base import ReadOnlyAdmin, admin_actor, service_action
from orchestration.models import ApiKey, AuditEvent, CustomAction, KeyScope, Role, UserSecret
from orchestration.secrets import secret_delete, secret_set
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


class CustomActionForm(forms.ModelForm[CustomAction]):
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="optional; fills ${secret} in headers and makes the server issue the request "
        "(only to CUSTOM_ACTION_HOSTS). Blank keeps the current one.",
    )
    clear_secret = forms.BooleanField(required=False, help_text="remove the secret (the browser issues it again)")

    class Meta:
        model = CustomAction
        fields = ["object_type", "name", "tooltip", "method", "url", "payload", "headers", "confirm", "roles", "order"]

    def clean_roles(self) -> list[str]:
        roles = self.cleaned_data.get("roles") or []
        if not isinstance(roles, list) or any(r not in ("admin", "user") for r in roles):
            raise forms.ValidationError('a list of "admin" and "user" (empty: everyone)')
        return roles

    def clean_url(self) -> str:
        url: str = self.cleaned_data["url"]
        if not url.startswith(("http://", "https://")):
            raise forms.ValidationError("an http or https URL")
        return url

    def clean_headers(self) -> dict[str, str]:
        headers = self.cleaned_data.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise forms.ValidationError('an object of header names and text values, {"X-Token": "${secret}"}')
        return headers


@admin.register(CustomAction)
class CustomActionAdmin(admin.ModelAdmin[CustomAction]):
    """Context-menu actions; those listed in CUSTOM_ACTIONS_FILE are overwritten from it at start-up."""

    list_display = ["name", "object_type", "method", "url", "confirm", "roles", "via_server", "from_file"]
    list_filter = ["object_type", "from_file"]
    search_fields = ["name", "url"]
    form = CustomActionForm

    @admin.display(boolean=True, description="issued by the server")
    def via_server(self, obj: CustomAction) -> bool:
        return obj.via_server

    def save_model(self, request: HttpRequest, obj: CustomAction, form: Any, change: bool) -> None:
        data = form.cleaned_data
        if data.get("clear_secret"):
            action_set_secret(obj, "")
        elif data.get("secret"):
            action_set_secret(obj, data["secret"])
        super().save_model(request, obj, form, change)
