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


def wake_on_enqueue(queue_ids: list[str]) -> None:
    """An enqueue to a served queue wakes its running apps now, not at their next poll (an
    enqueue listener after the commit: autoscalers/apps.py)."""
    for app_id in services.apps_serving(queue_ids):
        reconcile_task.delay(app_id)
