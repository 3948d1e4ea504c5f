"""What every page view shares: spans, sorting, paging, toasts, and refusals as 4xx answers.

Page views are thin: they read through selectors, change state only through services, and
turn a refused change (ServiceError) into a 4xx answer with a toast for HTMX to show.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_POST

from core.api import error_body
from core.errors import InvalidInput, ServiceError

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


def span_of(request: HttpRequest) -> str:
    value = request.GET.get("span", "3h")
    return value if value in SPAN_VALUES else "3h"


def sort_of(request: HttpRequest, keys: Collection[str], default: str = "name") -> tuple[str, bool]:
    """`?sort=key` or `?sort=-key` (descending), limited to the table's keys."""
    raw = request.GET.get("sort", default)
    key = raw.lstrip("-")
    return (key if key in keys else default), raw.startswith("-")


def pager(request: HttpRequest, total: int) -> dict[str, Any]:
    """Offset paging by PAGE_ROWS: where this page starts and ends (1-based, as the pager reads
    "101 to 200 of 250"), and where the next and previous pages start."""
    offset = min(max(0, int_param(request, "offset", 0) or 0), max(total - 1, 0))
    return {
        "total": total,
        "offset": offset,
        "first_row": offset + 1 if total else 0,
        "last_row": min(offset + PAGE_ROWS, total),
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
