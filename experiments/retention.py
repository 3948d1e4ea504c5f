"""Retention of the experiments' bulkiest records: log chunks and the usage ledger."""

from __future__ import annotations

from django.conf import settings

from core.retention import purge_older_than
from experiments.models import LogChunk, UsageRecord


def experiment_records_purge() -> dict[str, int]:
    """Apply LOG_RETENTION_DAYS and USAGE_RETENTION_DAYS."""
    return {
        "logs": purge_older_than(LogChunk, "created_at", settings.LOG_RETENTION_DAYS),
        "usage": purge_older_than(UsageRecord, "ended_at", settings.USAGE_RETENTION_DAYS),
    }
