"""The Orchestration pages' shell: the home page, health, readiness, and JSON errors for the APIs."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views import defaults
from django.views.decorators.http import require_GET

from core.api import error_body
from core.redis import redis_client


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect(reverse("pages:workers"))


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers (no dependencies checked)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """The database (and Redis, when configured) answer."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure rather than raising it
        checks["database"] = f"error: {exc.__class__.__name__}"
    if settings.REDIS_URL:
        try:
            redis_client().ping()
            checks["redis"] = "ok"
        except Exception as exc:  # same: report, do not raise
            checks["redis"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


def _api_path(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/clearml/"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for a URL no view matches: JSON under /api/ and /clearml/ (clients parse it), Django's page elsewhere."""
    if _api_path(request):
        return JsonResponse(error_body("not_found", f"no such resource: {request.path}"), status=404)
    return defaults.page_not_found(request, exception or Exception("not found"))


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """400 that no view answered itself (too many query parameters, a suspicious request): JSON for API clients."""
    if _api_path(request):
        reason = str(exception) if exception is not None else "bad request"
        return JsonResponse(error_body("bad_request", reason[:300]), status=400)
    return defaults.bad_request(request, exception or Exception("bad request"))


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON for API clients (the error is logged with its traceback), Django's page elsewhere."""
    if _api_path(request):
        return JsonResponse(error_body("server_error", "the server failed; the error is logged"), status=500)
    return defaults.server_error(request)
