"""DRF authentication by API key (`Authorization: Bearer ACCESS.SECRET`)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

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
