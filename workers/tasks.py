"""Periodic worker reconcilers run by Celery beat."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from experiments.services import attempts_unbound_expire
from workers import timeseries
from workers.services import worker_check_liveness

# When this process's checker first ran: no verdicts until workers had two timeouts since.
_STARTED = timezone.now()


@shared_task(name="workers.check_liveness", time_limit=120, soft_time_limit=100)
def check_liveness() -> dict[str, int]:
    verdicts = worker_check_liveness(since=_STARTED)
    verdicts["unbound_expired"] = attempts_unbound_expire()
    return verdicts


@shared_task(name="workers.stats_sample", time_limit=60, soft_time_limit=50)
def stats_sample_task() -> int:
    return timeseries.stats_sample()


@shared_task(name="workers.stats_rollup", time_limit=300, soft_time_limit=270)
def stats_rollup_task() -> dict[int, int]:
    return timeseries.stats_rollup()


@shared_task(name="workers.stats_purge", time_limit=600, soft_time_limit=540)
def stats_purge_task() -> dict[str, int]:
    return timeseries.stats_purge()
