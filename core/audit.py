"""The audit trail: one row per state change, written in the changing transaction."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.utils import timezone

from core.models import AuditEvent


class Who(Protocol):
    """Whoever acts (accounts' Actor): the kernel needs only the user and a label."""

    @property
    def user_id(self) -> int | None: ...

    @property
    def label(self) -> str: ...


@dataclass(frozen=True)
class Change:
    """One state change to record."""

    object_type: str
    object_id: str
    action: str
    before: dict[str, Any]
    after: dict[str, Any]
    message: str = ""


def audit_record(*, actor: Who, change: Change) -> None:
    """Write one audit event; call inside the transaction that makes the change."""
    audit_record_many(actor=actor, changes=[change])


def audit_record_many(*, actor: Who, changes: Iterable[Change]) -> None:
    """Write one audit event per change in one INSERT (bulk operations)."""
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                at=now,
                actor_id=actor.user_id,
                actor_label=actor.label[:200],
                object_type=c.object_type,
                object_id=c.object_id,
                action=c.action,
                before=c.before,
                after=c.after,
                message=c.message[:500],
            )
            for c in changes
        ],
        batch_size=1000,
    )
