"""Periodic worker reconcilers run by Celery beat."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from workers.services import worker_check_liveness

# When this process's checker first ran: no verdicts until workers had two timeouts since.
_STARTED = timezone.now()


@shared_task(name="workers.check_liveness", time_limit=120, soft_time_limit=100)
def check_liveness() -> dict[str, int]:
    return worker_check_liveness(since=_STARTED)
