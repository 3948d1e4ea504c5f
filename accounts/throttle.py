"""Password-login throttle: failures counted per client address and per username; successes are free.

Used by the API's login (`muster login`), the page login and Django admin's login. The
client address is REMOTE_ADDR only. Forwarded headers are trusted by the ASGI server
(uvicorn, gunicorn's uvicorn workers) and only from TRUSTED_PROXIES, which rewrites
REMOTE_ADDR for requests that came through one; here no header is ever read, so a client
cannot pick a new address per guess. Counting per username too stops a guesser with many
addresses; the window is short (a minute), so a locked-out owner waits a minute at most.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

WINDOW_S = 60


def _limit() -> int:
    rate: str = settings.LOGIN_THROTTLE
    return int(rate.split("/", maxsplit=1)[0])


def _keys(address: str, username: str) -> list[str]:
    who = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [f"login-fail:addr:{address}", f"login-fail:user:{who}"]


def login_refused(*, address: str, username: str) -> bool:
    """Whether this address or this username has used up its failures in the current window."""
    counts = cache.get_many(_keys(address, username))
    return any(int(n) >= _limit() for n in counts.values())


def login_failed(*, address: str, username: str) -> None:
    """Count one failed password login against the address and the username."""
    for key in _keys(address, username):
        if not cache.add(key, 1, WINDOW_S):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, WINDOW_S)


def client_address(request: HttpRequest) -> str:
    """The peer's address as the ASGI server gave it (a trusted proxy's client, else the peer)."""
    return str(request.META.get("REMOTE_ADDR", ""))


def too_many() -> HttpResponse:
    response = HttpResponse("Too many failed logins; wait a minute.", status=429, content_type="text/plain")
    response["Retry-After"] = str(WINDOW_S)
    return response


def throttled_login(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a Django login view: refuse POSTs past the limit (429); count those that did not log in."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "POST":
            return view(request, *args, **kwargs)
        address, username = client_address(request), str(request.POST.get("username", ""))
        if login_refused(address=address, username=username):
            return too_many()
        response = view(request, *args, **kwargs)
        # Django's login views redirect on success and show the form again on a failure.
        if response.status_code != 302:
            login_failed(address=address, username=username)
        return response

    return wrapped
