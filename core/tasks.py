"""The kernel's periodic tasks."""

from __future__ import annotations

from celery import shared_task

from core.retention import audit_purge


@shared_task(name="core.audit_purge", time_limit=600, soft_time_limit=540)
def audit_purge_task() -> dict[str, int]:
    return audit_purge()
