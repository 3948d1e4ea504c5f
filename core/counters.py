"""Counters that add up across server processes: in Redis when configured, else per process.

The hot paths (every claim check, every report) count here. With Redis, counts gather in
the process and one thread sends them every COUNTER_FLUSH_S seconds in one round trip, so
no request waits on Redis to count itself; a process that dies loses at most that
interval's counts. COUNTER_FLUSH_S = 0 sends each count at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter

from django.conf import settings

from core.redis import redis_client

PREFIX = "muster:counters:"
NAMES = ("claim_checks", "claims", "reports")
log = logging.getLogger(__name__)


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.local: Counter[str] = Counter()  # without Redis: the totals of this process
        self.pending: Counter[str] = Counter()  # with Redis: not sent yet
        self.thread: threading.Thread | None = None

    def add(self, names: tuple[str, ...]) -> None:
        if not settings.REDIS_URL:
            with self.lock:
                self.local.update(names)
            return
        if settings.COUNTER_FLUSH_S <= 0:
            _send(Counter(names))
            return
        with self.lock:
            self.pending.update(names)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="counters", daemon=True)
                self.thread.start()

    def flush(self) -> None:
        with self.lock:
            counts, self.pending = self.pending, Counter()
        if counts:
            _send(counts)

    def _loop(self) -> None:
        while True:
            time.sleep(settings.COUNTER_FLUSH_S)
            self.flush()


COUNTS = _Counts()


def _send(counts: Counter[str]) -> None:
    """Add counts in Redis, one round trip; a counter never fails a request."""

    try:
        pipe = redis_client().pipeline(transaction=False)
        for name, n in counts.items():
            pipe.incrby(PREFIX + name, n)
        pipe.execute()
    except Exception:
        log.warning("could not send counters to Redis", exc_info=True)


def counter_incr(*names: str) -> None:
    """Count events (each name once)."""
    COUNTS.add(names)


def counters_flush() -> None:
    """Send what this process counted and has not sent yet (at shutdown)."""
    if settings.REDIS_URL:
        COUNTS.flush()


def counters_read() -> dict[str, int]:
    if settings.REDIS_URL:
        with contextlib.suppress(Exception):
            values = redis_client().mget([PREFIX + n for n in NAMES])
            return {n: int(v or 0) for n, v in zip(NAMES, values, strict=True)}
    with COUNTS.lock:
        return {n: COUNTS.local[n] for n in NAMES}
