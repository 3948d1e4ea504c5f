"""The web pages' shell: login, logout, the settings page, and what every page view shares.

Page views are thin: they read through selectors, change state only through services, and
turn a refused change (ServiceError) into a 4xx answer with a toast for HTMX to show.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from functools import wraps
from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_POST

from orchestration.actor import Actor, actor_for_user
from orchestration.api import error_body
from orchestration.errors import InvalidInput, ServiceError
from orchestration.throttle import throttled_login

SPANS = [
    ("3h", "3 Hours"),
    ("6h", "6 Hours"),
    ("12h", "12 Hours"),
    ("1d", "1 Day"),
    ("7d", "1 Week"),
    ("30d", "1 Month"),
]
SPAN_VALUES = {value for value, _ in SPANS}
PAGE_ROWS = 100


def actor(request: HttpRequest) -> Actor:
    return actor_for_user(request.user)


def span_of(request: HttpRequest) -> str:
    value = request.GET.get("span", "3h")
    return value if value in SPAN_VALUES else "3h"


def sort_of(request: HttpRequest, keys: Collection[str], default: str = "name") -> tuple[str, bool]:
    """`?sort=key` or `?sort=-key` (descending), limited to the table's keys."""
    raw = request.GET.get("sort", default)
    key = raw.lstrip("-")
    return (key if key in keys else default), raw.startswith("-")


def pager(request: HttpRequest, total: int) -> dict[str, Any]:
    """Offset paging by PAGE_ROWS: where this page starts, and where the next and previous do."""
    offset = min(max(0, int_param(request, "offset", 0) or 0), max(total - 1, 0))
    return {
        "total": total,
        "offset": offset,
        "next_offset": offset + PAGE_ROWS if offset + PAGE_ROWS < total else None,
        "prev_offset": max(0, offset - PAGE_ROWS) if offset else None,
    }


def with_toast(response: HttpResponse, text: str, level: str = "ok", **events: Any) -> HttpResponse:
    """Ask the page (through HX-Trigger) to show a toast and fire any other named events."""
    response["HX-Trigger"] = json.dumps({"toast": {"text": text, "level": level}, **events})
    return response


def refused(error: ServiceError) -> HttpResponse:
    """A change the domain refused: its status and message, shown as an error toast."""
    response = HttpResponse(status=error.status)
    response["HX-Reswap"] = "none"
    return with_toast(response, error.message, "error")


def page_action(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """POST-only, signed-in, and every ServiceError becomes a 4xx with a toast (never a 500)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except ServiceError as e:
            return refused(e)

    return login_required(require_POST(wrapped))


def json_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A signed-in GET answering JSON; a ServiceError becomes the API's error body and status."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return JsonResponse(error_body("not_authenticated", "log in first"), status=401)
        try:
            return view(request, *args, **kwargs)
        except ServiceError as e:
            return JsonResponse(error_body(e.code, e.message, e.field), status=e.status)

    return wrapped


def int_param(request: HttpRequest, name: str, default: int | None = None) -> int | None:
    raw = request.POST.get(name, request.GET.get(name))
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a whole number", field=name) from None


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(reverse("pages:workers"))


login = throttled_login(
    auth_views.LoginView.as_view(template_name="login.html", redirect_authenticated_user=True)  # type: ignore[arg-type]
)
logout = auth_views.LogoutView.as_view(next_page="/login/")


# -- settings: one's API keys and personal secrets ------------------------------------------------


def _settings_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    from orchestration.models import ApiKey, UserSecret

    user_id = int(request.user.pk or 0)  # login_required: always a saved user
    keys = ApiKey.objects.filter(user_id=user_id).order_by("-created_at")[:PAGE_ROWS]
    secrets = UserSecret.objects.filter(owner_id=user_id).order_by("name").values("name", "updated_at")
    return {"section": "settings", "keys": keys, "secrets": secrets, **extra}


@login_required
def settings_page(request: HttpRequest) -> HttpResponse:
    return render(request, "orchestration/settings.html", _settings_context(request))


@page_action
def key_create(request: HttpRequest) -> HttpResponse:
    from orchestration.models import Role
    from orchestration.services import apikey_create

    me = actor(request)
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
    return with_toast(render(request, "orchestration/settings_keys.html", context), f"Key {new.key.access_key} made")


@page_action
def key_revoke(request: HttpRequest, access_key: str) -> HttpResponse:
    from orchestration.services import apikey_revoke

    apikey_revoke(actor=actor(request), access_key=access_key)
    response = render(request, "orchestration/settings_keys.html", _settings_context(request))
    return with_toast(response, f"Key {access_key} revoked")


@page_action
def secret_save(request: HttpRequest) -> HttpResponse:
    from orchestration.secrets import secret_set

    name = request.POST.get("name", "").strip()
    secret_set(actor=actor(request), name=name, value=request.POST.get("value", ""))
    response = render(request, "orchestration/settings_secrets.html", _settings_context(request))
    return with_toast(response, f"Secret {name} saved")


@page_action
def secret_remove(request: HttpRequest, name: str) -> HttpResponse:
    from orchestration.secrets import secret_delete

    secret_delete(actor=actor(request), name=name)
    response = render(request, "orchestration/settings_secrets.html", _settings_context(request))
    return with_toast(response, f"Secret {name} deleted")


@login_required
@require_POST
def custom_action(request: HttpRequest, pk: int) -> JsonResponse:
    """Issue a custom action for one object: the prepared request for the browser, or the server's result."""
    from orchestration.actions import action_issue

    try:
        answer = action_issue(actor=actor(request), action_id=pk, object_id=request.POST.get("object", ""))
    except ServiceError as e:
        return JsonResponse(error_body(e.code, e.message, e.field), status=e.status)
    return JsonResponse(answer)
