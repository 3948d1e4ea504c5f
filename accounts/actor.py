"""Who is acting: the user, the key and the role behind a request, a command or a task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.contrib.auth.models import User

from accounts.models import ApiKey, KeyScope, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
    from django.http import HttpRequest


@dataclass(frozen=True)
class Actor:
    """The identity a service acts for; services check rights against it."""

    user_id: int | None
    label: str
    role: Role
    key: ApiKey | None = None
    group_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def is_agent(self) -> bool:
        return self.role == Role.AGENT

    @property
    def can_write(self) -> bool:
        return self.key is None or self.key.scope == KeyScope.WRITE


SYSTEM = Actor(user_id=None, label="system", role=Role.ADMIN)


def actor_for_user(user: AbstractBaseUser | AnonymousUser, key: ApiKey | None = None) -> Actor:
    """The actor for a signed-in user, or for a user acting through an API key."""

    assert isinstance(user, User)
    is_admin = user.is_superuser or user.is_staff
    if key is not None and key.role == Role.AGENT:
        role = Role.AGENT
    elif is_admin and (key is None or key.role == Role.ADMIN):
        role = Role.ADMIN
    else:
        role = Role.USER
    groups = frozenset(user.groups.values_list("id", flat=True)) if role == Role.USER else frozenset()
    label = user.get_username() + (f" ({key.access_key})" if key is not None else "")
    return Actor(user_id=user.pk, label=label, role=role, key=key, group_ids=groups)


def request_actor(request: HttpRequest) -> Actor:
    """The actor behind a signed-in page request."""
    return actor_for_user(request.user)
