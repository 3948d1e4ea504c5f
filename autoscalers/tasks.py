"""Beat's autoscaler pass, and the wake-up after an enqueue to a served queue."""

from __future__ import annotations

from celery import shared_task

from autoscalers import services


@shared_task(name="autoscalers.reconcile_due", ignore_result=True)
def reconcile_due_task() -> int:
    return services.reconcile_due()


@shared_task(name="autoscalers.reconcile", ignore_result=True)
def reconcile_task(app_id: str) -> None:
    services.reconcile(app_id)
