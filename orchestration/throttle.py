"""Throttle for password logins on the admin pages (the API login uses DRF's throttle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

WINDOW_S = 60


def _limit() -> int:
    rate: str = settings.LOGIN_THROTTLE
    return int(rate.split("/", maxsplit=1)[0])


def throttled_login(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Refuse password POSTs from one address beyond the login rate (429)."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            key = f"login-throttle:{request.META.get('REMOTE_ADDR', '')}"
            count = cache.get_or_set(key, 0, WINDOW_S) or 0
            if count >= _limit():
                return HttpResponse("Too many login attempts; wait a minute.", status=429, content_type="text/plain")
            try:
                cache.incr(key)
            except ValueError:
                cache.set(key, 1, WINDOW_S)
        return view(request, *args, **kwargs)

    return wrapped
