"""Wake-ups for agents waiting on queues: Redis pub/sub when configured, after commit."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)
CHANNEL_PREFIX = "muster:queue:"


def notify_queues(queue_ids: Iterable[str]) -> None:
    """Tell waiters on these queues that work arrived, once the transaction commits."""
    ids = sorted(set(queue_ids))
    if ids and settings.REDIS_URL:
        transaction.on_commit(lambda: _publish(ids))


def _publish(queue_ids: list[str]) -> None:
    from orchestration.redis import redis_client

    try:
        client = redis_client()
        for queue_id in queue_ids:
            client.publish(CHANNEL_PREFIX + queue_id, b"1")
    except Exception:  # a lost wake-up costs latency, never correctness: waiters re-check
        log.warning("could not publish a queue wake-up", exc_info=True)
