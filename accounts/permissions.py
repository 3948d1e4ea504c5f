"""Who may call what: roles derived from the user and the key (admin, user, agent)."""

from __future__ import annotations

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from accounts.actor import Actor, actor_for_user
from accounts.models import ApiKey


def actor_of(request: Request) -> Actor:
    """The actor behind a request, computed once per request."""
    cached = getattr(request, "_muster_actor", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    key = request.auth if isinstance(request.auth, ApiKey) else None
    actor = actor_for_user(request.user, key)
    request._muster_actor = actor  # type: ignore[attr-defined]
    return actor


def _authenticated(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


class _Role(permissions.BasePermission):
    roles: frozenset[str] = frozenset()
    message = "your role may not call this endpoint"

    def has_permission(self, request: Request, view: Any) -> bool:
        if not _authenticated(request):
            return False
        actor = actor_of(request)
        if actor.role not in self.roles:
            return False
        if request.method not in permissions.SAFE_METHODS and not actor.can_write:
            self.message = "this key is read-only"
            return False
        return True


class IsHumanUser(_Role):
    """Users and admins (people and their scripts); agent keys are refused."""

    roles = frozenset({"user", "admin"})


class IsAdmin(_Role):
    roles = frozenset({"admin"})
    message = "only admins may call this endpoint"


class IsAgent(_Role):
    """Agent keys (and admins, for tools and tests)."""

    roles = frozenset({"agent", "admin"})
    message = "only agent keys may call this endpoint"


class IsAnyRole(_Role):
    roles = frozenset({"user", "admin", "agent"})


class AdminWritesHumanReads(_Role):
    """Users read, admins write."""

    roles = frozenset({"user", "admin"})

    def has_permission(self, request: Request, view: Any) -> bool:
        if not super().has_permission(request, view):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        self.message = "only admins may change this"
        return actor_of(request).is_admin
