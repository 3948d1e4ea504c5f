"""Accounts' pages: login, logout, and one's settings (API keys and personal secrets)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from accounts.actor import request_actor
from accounts.models import ApiKey, Role, UserSecret
from accounts.secrets import secret_delete, secret_set
from accounts.services import apikey_create, apikey_revoke
from accounts.throttle import throttled_login
from core.errors import InvalidInput
from core.pages import PAGE_ROWS, int_param, page_action, with_toast

login = throttled_login(
    auth_views.LoginView.as_view(template_name="login.html", redirect_authenticated_user=True)  # type: ignore[arg-type]
)
logout = auth_views.LogoutView.as_view(next_page="/login/")


# -- settings: one's API keys and personal secrets ------------------------------------------------


def _settings_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    user_id = int(request.user.pk or 0)  # login_required: always a saved user
    keys = ApiKey.objects.filter(user_id=user_id).order_by("-created_at")[:PAGE_ROWS]
    secrets = UserSecret.objects.filter(owner_id=user_id).order_by("name").values("name", "updated_at")
    return {"section": "settings", "keys": keys, "secrets": secrets, **extra}


@login_required
def settings_page(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/settings.html", _settings_context(request))


@page_action
def key_create(request: HttpRequest) -> HttpResponse:
    me = request_actor(request)
    role = request.POST.get("role") or Role.USER
    days = int_param(request, "expires_in_days")
    if days is not None and not 1 <= days <= 3650:
        raise InvalidInput("expiry must be from 1 to 3650 days", field="expires_in_days")
    new = apikey_create(
        actor=me,
        user=request.user,  # type: ignore[arg-type]
        name=request.POST.get("name", "")[:100],
        role=role,
        expires_in_days=days,
        worker_prefix=request.POST.get("worker_prefix", "")[:100],
    )
    context = _settings_context(request, new_token=new.token, new_key=new.key)
    return with_toast(render(request, "accounts/settings_keys.html", context), f"Key {new.key.access_key} made")


@page_action
def key_revoke(request: HttpRequest, access_key: str) -> HttpResponse:
    apikey_revoke(actor=request_actor(request), access_key=access_key)
    response = render(request, "accounts/settings_keys.html", _settings_context(request))
    return with_toast(response, f"Key {access_key} revoked")


@page_action
def secret_save(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()
    secret_set(actor=request_actor(request), name=name, value=request.POST.get("value", ""))
    response = render(request, "accounts/settings_secrets.html", _settings_context(request))
    return with_toast(response, f"Secret {name} saved")


@page_action
def secret_remove(request: HttpRequest, name: str) -> HttpResponse:
    secret_delete(actor=request_actor(request), name=name)
    response = render(request, "accounts/settings_secrets.html", _settings_context(request))
    return with_toast(response, f"Secret {name} deleted")
