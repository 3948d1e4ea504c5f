"""Secrets: per-user ones and experiments' own secret_env, encrypted at rest (Fernet), never read back.

The key is SECRETS_KEY (any string; SHA-256 makes the Fernet key), or SECRET_KEY when it is
not set. Values leave the server only in a claim's run spec, to the agent that runs one of
the owner's experiments (the experiment's own secret_env wins on a name clash), claimed by a
worker allowed to serve its queue (queues/access.py). An experiment's secret_env is stored as
{name: ciphertext}: secret_env_encrypt at every write, secret_env_decrypt only for a run spec.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection

from accounts.actor import Actor
from accounts.models import UserSecret
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Forbidden, InvalidInput, NotFound

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
MAX_VALUE = 64 * 1024


def _fernet() -> Fernet:
    secret = settings.SECRETS_KEY or settings.SECRET_KEY
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def text_encrypt(text: str) -> str:
    """A value kept at rest (a custom action's secret), encrypted with the secrets' key."""
    return _fernet().encrypt(text.encode()).decode()


def text_decrypt(token: str) -> str:
    """The clear text of a value that text_encrypt made."""
    return _fernet().decrypt(token.encode()).decode()


def secret_env_encrypt(values: dict[str, str]) -> dict[str, str]:
    """An experiment's secret_env as stored: each value encrypted, the names in clear (pages list them)."""
    fernet = _fernet()
    return {str(name): fernet.encrypt(str(value).encode()).decode() for name, value in values.items()}


def secret_env_decrypt(stored: dict[str, str]) -> dict[str, str]:
    """An experiment's stored secret_env in clear, for a claim's run spec only."""
    fernet = _fernet()
    out: dict[str, str] = {}
    for name, ciphertext in stored.items():
        try:
            out[name] = fernet.decrypt(str(ciphertext).encode()).decode()
        except InvalidToken:
            continue  # encrypted with another key (SECRETS_KEY changed): skipped, not leaked as garbage
    return out


def _owner(actor: Actor, owner: User | None) -> int:
    if actor.is_agent or actor.user_id is None:
        raise Forbidden("agents do not manage secrets")
    if owner is not None and owner.pk != actor.user_id and not actor.is_admin:
        raise Forbidden("only admins manage other people's secrets")
    return owner.pk if owner is not None else actor.user_id


@atomic
def secret_set(*, actor: Actor, name: str, value: str, owner: User | None = None) -> UserSecret:
    """Create or replace a secret (an environment variable name and its value)."""
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    owner_id = _owner(actor, owner)
    if not NAME_RE.match(name):
        raise InvalidInput("a secret's name is an environment variable name (letters, digits, _)", field="name")
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE or "\x00" in value:
        raise InvalidInput(f"a secret's value is 1 to {MAX_VALUE} characters, no NUL", field="value")
    ciphertext = _fernet().encrypt(value.encode()).decode()
    secret, created = UserSecret.objects.update_or_create(
        owner_id=owner_id, name=name, defaults={"ciphertext": ciphertext}
    )
    audit_record(actor=actor, change=Change("secret", f"{owner_id}:{name}", "create" if created else "update", {}, {}))
    return secret


@atomic
def secret_delete(*, actor: Actor, name: str, owner: User | None = None) -> None:
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    owner_id = _owner(actor, owner)
    deleted, _ = UserSecret.objects.filter(owner_id=owner_id, name=name).delete()
    if not deleted:
        raise NotFound(f"you have no secret named {name!r}", field="name")
    audit_record(actor=actor, change=Change("secret", f"{owner_id}:{name}", "delete", {}, {}))


_SECRETS_SQL = f"SELECT name, ciphertext FROM {UserSecret._meta.db_table} WHERE owner_id = %s ORDER BY name"  # noqa: S608


def secrets_for_run(owner_id: int, rows: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """The owner's secrets in clear, for a claim's run spec only.

    `rows`: the owner's (name, ciphertext) pairs when the caller already read them (the
    claim's one-statement take on PostgreSQL does).
    """
    out: dict[str, str] = {}
    fernet = None
    if rows is None:
        # Plain SQL: this runs on every claim, and the ORM's query compilation cost more than the query.
        with connection.cursor() as cur:
            cur.execute(_SECRETS_SQL, [owner_id])
            rows = cur.fetchall()
    for name, ciphertext in rows:
        fernet = fernet or _fernet()
        try:
            out[name] = fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            continue  # encrypted with another key (SECRETS_KEY changed): skipped, not leaked as garbage
    return out
