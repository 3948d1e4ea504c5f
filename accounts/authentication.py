"""Authentication by API key (`Authorization: Bearer ACCESS.SECRET`): DRF's, and the plain
views' (the claim, the report, snapshots), one rule for both."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.actor import Actor, actor_for_user
from accounts.services import apikey_check


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        token = token.strip()
        if not token:
            raise exceptions.AuthenticationFailed("empty API key")
        key = apikey_check(token)
        if key is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API key")
        return key.user, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def actor_from_authorization(header: str) -> Actor | None:
    """The actor behind an Authorization header for the plain views, or None (no key, or not a valid one)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "token") or not token:
        return None
    key = apikey_check(token)
    return actor_for_user(key.user, key) if key is not None else None
