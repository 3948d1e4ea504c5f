"""Django's middleware under ASGI without a thread hop per method (orchestration/middleware.py).

An API request passes the whole stack in the event loop; a request that saves a session
(a login) still hops for that save and works; CSRF, the session and the security headers
behave as Django's own middleware does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections, connections, reset_queries
from django.test import AsyncClient
from django.utils import deprecation

from accounts.actor import SYSTEM
from accounts.models import Role
from accounts.services import apikey_create
from orchestration import middleware
from orchestration.asgi import start_requests_without_a_hop

pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
async def _close_request_connections() -> Any:
    """The views' sync steps ran on asgiref's shared thread: close what they opened there."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The middleware methods sent to a thread during the test (ours, and Django's MiddlewareMixin's)."""
    calls: list[str] = []
    real = middleware.sync_to_async

    def counting(fn: Callable[..., Any], **kw: Any) -> Any:
        calls.append(getattr(fn, "__qualname__", repr(fn)))
        return real(fn, **kw)

    monkeypatch.setattr(middleware, "sync_to_async", counting)
    monkeypatch.setattr(deprecation, "sync_to_async", counting)  # what the stock middleware would use
    return calls


def _admin_token() -> str:
    try:
        admin = User.objects.create_superuser("root", "", "pw-admin-123")
        return apikey_create(actor=SYSTEM, user=admin, role=Role.ADMIN).token
    finally:
        connections.close_all()


async def test_an_api_request_passes_every_middleware_in_the_event_loop(hops: list[str]) -> None:
    token = await sync_to_async(_admin_token)()
    r = await AsyncClient().get("/api/v1/queues/", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert hops == []
    assert r["X-Frame-Options"] == "DENY" and r["X-Content-Type-Options"] == "nosniff"  # still set


async def test_a_login_saves_its_session_through_a_thread_and_the_session_then_works(hops: list[str]) -> None:
    await sync_to_async(_admin_token)()
    client = AsyncClient()
    r = await client.post("/login/", {"username": "root", "password": "pw-admin-123"})
    assert r.status_code == 302
    assert any("SessionMiddleware.process_response" in h for h in hops)
    assert "sessionid" in r.cookies
    r = await client.get("/orchestration/queues/")
    assert r.status_code == 200 and b"root" in r.content


async def test_csrf_is_still_enforced_in_the_event_loop(hops: list[str]) -> None:
    await sync_to_async(_admin_token)()
    client = AsyncClient(enforce_csrf_checks=True)
    r = await client.post("/login/", {"username": "root", "password": "pw-admin-123"})
    assert r.status_code == 403  # no token
    page = await client.get("/login/")
    token = page.cookies["csrftoken"].value
    r = await client.post("/login/", {"username": "root", "password": "pw-admin-123", "csrfmiddlewaretoken": token})
    assert r.status_code == 302


async def test_under_asgi_a_request_starts_without_a_thread_hop_and_still_closes_its_connections() -> None:
    start_requests_without_a_hop()  # (also done at import; Django's test client reconnects it per request)
    try:
        sync_receivers, _ = signals.request_started._live_receivers(ASGIHandler)  # type: ignore[attr-defined]
        assert sync_receivers == []  # no sync receiver: asend makes no hop
        finished, _ = signals.request_finished._live_receivers(ASGIHandler)  # type: ignore[attr-defined]
        assert close_old_connections in finished  # the request's thread still gives its connections back
    finally:
        signals.request_started.connect(close_old_connections)  # as the rest of the test session had them
        signals.request_started.connect(reset_queries)
