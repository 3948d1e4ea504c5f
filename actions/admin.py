"""Admin for custom actions; a secret is set through the form and never shown."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from actions.models import CustomAction
from actions.services import action_set_secret


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
