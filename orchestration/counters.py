"""Counters that add up across server processes: in Redis when configured, else per process."""

from __future__ import annotations

import contextlib
from collections import Counter

from django.conf import settings

PREFIX = "muster:counters:"
NAMES = ("claim_checks", "claims", "reports")
_local: Counter[str] = Counter()


def counter_incr(name: str, amount: int = 1) -> None:
    """Count an event; a counter never fails the request that counts."""
    if settings.REDIS_URL:
        from orchestration.redis import redis_client

        with contextlib.suppress(Exception):
            redis_client().incrby(PREFIX + name, amount)
            return
    _local[name] += amount


def counters_read() -> dict[str, int]:
    if settings.REDIS_URL:
        from orchestration.redis import redis_client

        with contextlib.suppress(Exception):
            values = redis_client().mget([PREFIX + n for n in NAMES])
            return {n: int(v or 0) for n, v in zip(NAMES, values, strict=True)}
    return {n: _local[n] for n in NAMES}
