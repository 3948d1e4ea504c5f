"""Retention: delete rows older than each table's setting, in bounded batches."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from core.models import AuditEvent

BATCH = 5000


def purge_older_than(model: type[Model], field: str, days: int) -> int:
    """Delete rows whose `field` is more than `days` old."""
    return purge_before(model, field, timezone.now() - timedelta(days=days))


def purge_before(model: type[Model], field: str, cutoff: datetime, **where: Any) -> int:
    """Delete rows whose `field` is before `cutoff` (and match `where`), BATCH rows per transaction."""
    total = 0
    while True:
        with transaction.atomic():
            qs = model._default_manager.filter(**{f"{field}__lt": cutoff}, **where)
            ids = list(qs.values_list("pk", flat=True)[:BATCH])
            if not ids:
                return total
            model._default_manager.filter(pk__in=ids).delete()
        total += len(ids)


def audit_purge() -> dict[str, int]:
    """Apply AUDIT_RETENTION_DAYS."""
    return {"audit": purge_older_than(AuditEvent, "at", settings.AUDIT_RETENTION_DAYS)}
