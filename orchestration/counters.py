"""Counters that add up across server processes: in Redis when configured, else per process."""

from __future__ import annotations

import contextlib
from collections import Counter

from django.conf import settings

PREFIX = "muster:counters:"
NAMES = ("claim_checks", "claims", "reports")
_local: Counter[str] = Counter()


def counter_incr(*names: str) -> None:
    """Count events (one Redis round trip for all of them); a counter never fails a request."""
    if settings.REDIS_URL:
        from orchestration.redis import redis_client

        with contextlib.suppress(Exception):
            pipe = redis_client().pipeline(transaction=False)
            for name in names:
                pipe.incr(PREFIX + name)
            pipe.execute()
            return
    for name in names:
        _local[name] += 1


def counters_read() -> dict[str, int]:
    if settings.REDIS_URL:
        from orchestration.redis import redis_client

        with contextlib.suppress(Exception):
            values = redis_client().mget([PREFIX + n for n in NAMES])
            return {n: int(v or 0) for n, v in zip(NAMES, values, strict=True)}
    return {n: _local[n] for n in NAMES}
