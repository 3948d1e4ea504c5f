"""Who may change an experiment: one rule, enforced by the services and read by the pages, which
offer a user only the actions it allows (drag handles, Move, Dequeue, Stop and the rest)."""

from __future__ import annotations

from accounts.actor import Actor
from core.errors import Forbidden


def manage_refusal(actor: Actor, owner_id: int | None) -> str | None:
    """Why `actor` may not change an experiment owned by `owner_id`; None when it may."""
    if not actor.can_write:
        return "this key is read-only"
    if actor.is_agent:
        return "agent keys cannot manage experiments"
    if not actor.is_admin and owner_id != actor.user_id:
        return "only the owner or an admin may change this experiment"
    return None


def may_manage(actor: Actor, owner_id: int | None) -> bool:
    return manage_refusal(actor, owner_id) is None


def manage_check(actor: Actor, owner_id: int | None) -> None:
    reason = manage_refusal(actor, owner_id)
    if reason:
        raise Forbidden(reason)
