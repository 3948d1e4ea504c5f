"""API keys: made with a 256-bit secret shown once and kept only as an HMAC/SHA-256 digest."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.actor import Actor
from accounts.models import ApiKey, KeyScope, Role
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Forbidden, InvalidInput, NotFound

ACCESS_PREFIX = "mk"


def _pepper() -> bytes:
    return hashlib.sha256(b"muster-api-key:" + settings.SECRET_KEY.encode()).digest()


def key_digest(secret: str) -> str:
    """HMAC/SHA-256 of the secret: microseconds to check, unlike a password hash."""
    return hmac.new(_pepper(), secret.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A key just made: the secret is here once and never again."""

    key: ApiKey
    secret: str

    @property
    def token(self) -> str:
        return f"{self.key.access_key}.{self.secret}"


def _snapshot(key: ApiKey) -> dict[str, object]:
    return {
        "user": key.user_id,
        "role": key.role,
        "scope": key.scope,
        "revoked": key.revoked_at is not None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
    }


class QueueLimitRule(Protocol):
    def __call__(self, *, owner: User, refs: Sequence[str]) -> list[str]:
        """The ids of the queues these references (ids or names) name, each one the owner may use;
        a ServiceError naming `allowed_queues` otherwise."""
        ...


class QueueLimit:
    """Where an agent key's queue limit is checked. Who may serve which queue is the queues app's
    rule, and that app sits above accounts: it hands its rule in from AppConfig.ready()
    (queues/access.py: key_queues_resolve), so accounts never imports it."""

    def __init__(self) -> None:
        self.rule: QueueLimitRule | None = None

    def resolve(self, *, owner: User, refs: Sequence[str]) -> list[str]:
        if self.rule is None:
            raise InvalidInput("queue limits need the queues app", field="allowed_queues")
        return self.rule(owner=owner, refs=refs)


QUEUE_LIMIT = QueueLimit()


@atomic
def apikey_create(
    *,
    actor: Actor,
    user: User,
    name: str = "",
    role: str = Role.USER,
    scope: str = KeyScope.WRITE,
    expires_at: datetime | None = None,
    expires_in_days: int | None = None,
    allowed_queue_ids: Sequence[str] = (),  # ids or names
    worker_prefix: str = "",
) -> NewKey:
    """Make a key for `user` (admins for anyone, others for themselves, never above their role)."""
    if actor.is_agent or not actor.can_write:
        raise Forbidden("agent and read-only keys cannot make keys")
    if not actor.is_admin and actor.user_id != user.pk:
        raise Forbidden("you can only make keys for yourself")
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}", field="role")
    if scope not in KeyScope.values:
        raise InvalidInput(f"scope must be one of {', '.join(KeyScope.values)}", field="scope")
    if role == Role.ADMIN and not (user.is_staff or user.is_superuser):
        raise InvalidInput("only staff users can hold admin keys", field="role")
    if role != Role.AGENT and (allowed_queue_ids or worker_prefix):
        raise InvalidInput("allowed queues and a worker prefix apply to agent keys only", field="role")
    if expires_in_days is not None:
        expires_at = timezone.now() + timedelta(days=expires_in_days)
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("the expiry is in the past", field="expires_at")
    secret = secrets.token_urlsafe(32)  # 256 bits
    key = ApiKey.objects.create(
        access_key=f"{ACCESS_PREFIX}{secrets.token_hex(10)}",
        digest=key_digest(secret),
        user=user,
        name=name,
        role=role,
        scope=scope,
        expires_at=expires_at,
        worker_prefix=worker_prefix,
    )
    if allowed_queue_ids:
        queue_ids = QUEUE_LIMIT.resolve(owner=user, refs=allowed_queue_ids)
        key.allowed_queues.set(queue_ids)  # type: ignore[arg-type]  # the stubs assume integer keys; queue ids are text
    audit_record(actor=actor, change=Change("apikey", key.access_key, "create", {}, _snapshot(key), name))
    return NewKey(key=key, secret=secret)


@atomic
def apikey_revoke(*, actor: Actor, access_key: str) -> ApiKey:
    """Revoke a key at once; revoking a revoked key is a no-op."""
    if actor.is_agent or not actor.can_write:
        raise Forbidden("agent and read-only keys cannot revoke keys")
    key = ApiKey.objects.select_for_update().filter(access_key=access_key).first()
    if key is None:
        raise NotFound(f"no key {access_key}", field="access_key")
    if not actor.is_admin and key.user_id != actor.user_id:
        raise Forbidden("that key belongs to someone else", field="access_key")
    if key.revoked_at is None:
        before = _snapshot(key)
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        transaction.on_commit(apikey_forget_cached)
        audit_record(actor=actor, change=Change("apikey", key.access_key, "revoke", before, _snapshot(key)))
    return key


# token digest -> (key, checked at): agents authenticate on every call, so a key that
# checked out is trusted for a few seconds without a query. Revocation, expiry and
# deactivation therefore take effect within AUTH_CACHE_S (0 turns the cache off).
_checked: dict[str, tuple[ApiKey, float]] = {}
_CHECKED_MAX = 10_000


def apikey_check(token: str) -> ApiKey | None:
    """The live key a presented `ACCESS.SECRET` (or `ACCESS:SECRET`) token belongs to, if any."""
    sep = "." if "." in token else ":"
    access, _, secret = token.partition(sep)
    if not access or not secret or len(access) > 40 or len(secret) > 200:
        return None
    digest = key_digest(secret)
    cache_s: float = settings.AUTH_CACHE_S
    hit = _checked.get(access + digest) if cache_s > 0 else None
    if hit is not None and time.monotonic() - hit[1] < cache_s:
        expires_at = hit[0].expires_at
        # Expiry is checked on every request (revocation elsewhere takes up to AUTH_CACHE_S).
        return hit[0] if expires_at is None or expires_at > timezone.now() else None
    key = ApiKey.objects.select_related("user").filter(access_key=access).first()
    if key is None or not hmac.compare_digest(key.digest, digest):
        return None
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    if not key.user.is_active:
        return None
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > settings.API_KEY_TOUCH_INTERVAL_S:
        # Touched at most once a minute: a cheap hint for people, not a write per request.
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    if cache_s > 0:
        if len(_checked) >= _CHECKED_MAX:
            _checked.clear()
        _checked[access + digest] = (key, time.monotonic())
    return key


def apikey_forget_cached() -> None:
    """Drop every cached key check (tests; a revoke in this process also calls it)."""
    _checked.clear()


@atomic
def admin_user_ensure(*, username: str, password: str) -> User:
    """Make (or reset the password of) the first-run admin account."""
    user = User.objects.filter(username=username).first()
    if user is None:
        return User.objects.create_superuser(username, "", password)
    user.set_password(password)
    user.is_staff = user.is_superuser = user.is_active = True
    user.save()
    return user
