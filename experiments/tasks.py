"""The experiments' periodic tasks."""

from __future__ import annotations

from celery import shared_task

from experiments.retention import experiment_records_purge


@shared_task(name="experiments.records_purge", time_limit=600, soft_time_limit=540)
def records_purge_task() -> dict[str, int]:
    return experiment_records_purge()
