"""Periodic project-wide tasks."""

from __future__ import annotations

from celery import shared_task

from orchestration.retention import retention_purge


@shared_task(name="orchestration.retention_purge", time_limit=600, soft_time_limit=540)
def retention_purge_task() -> dict[str, int]:
    return retention_purge()
