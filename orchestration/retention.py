"""Retention: delete rows older than each table's setting, in bounded batches."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from experiments.models import LogChunk, UsageRecord
from orchestration.models import AuditEvent

BATCH = 5000


def _purge(model: type[Model], field: str, days: int) -> int:
    cutoff = timezone.now() - timedelta(days=days)
    total = 0
    while True:
        with transaction.atomic():
            ids = list(model._default_manager.filter(**{f"{field}__lt": cutoff}).values_list("pk", flat=True)[:BATCH])
            if not ids:
                return total
            model._default_manager.filter(pk__in=ids).delete()
        total += len(ids)


def retention_purge() -> dict[str, int]:
    """Apply AUDIT_RETENTION_DAYS, LOG_RETENTION_DAYS and USAGE_RETENTION_DAYS."""
    return {
        "audit": _purge(AuditEvent, "at", settings.AUDIT_RETENTION_DAYS),
        "logs": _purge(LogChunk, "created_at", settings.LOG_RETENTION_DAYS),
        "usage": _purge(UsageRecord, "ended_at", settings.USAGE_RETENTION_DAYS),
    }
