"""Counters for /metrics: gathered in the process, sent to Redis in one round trip per interval."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from core import redis as muster_redis
from core.counters import COUNTS, counter_incr, counters_flush, counters_read


def test_counts_add_up(settings: Any) -> None:
    before = counters_read()
    counter_incr("claim_checks", "claims")
    counter_incr("claim_checks")
    counters_flush()
    after = counters_read()
    assert after["claim_checks"] - before["claim_checks"] == 2
    assert after["claims"] - before["claims"] == 1


@pytest.mark.redis_only
def test_with_redis_counts_wait_for_the_flush_then_arrive_in_one_send(settings: Any) -> None:
    settings.COUNTER_FLUSH_S = 0.2
    counters_flush()
    before = counters_read()["reports"]
    for _ in range(5):
        counter_incr("reports")
    assert counters_read()["reports"] == before  # not sent yet: no request waited on Redis
    deadline = time.monotonic() + 5
    while counters_read()["reports"] != before + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counters_read()["reports"] == before + 5  # the process's flusher sent them
    assert not COUNTS.pending


@pytest.mark.redis_only
def test_threads_that_race_to_the_first_send_share_one_client_and_lose_no_count(
    settings: Any, monkeypatch: Any
) -> None:
    """A process's first sends come from many threads at once (50 long-polls' first checks).

    Each must get the one client: a second one, collected at once, closed its pool under a
    pipeline still using it, and those counts were lost (a flaky exact-count test).
    """

    settings.COUNTER_FLUSH_S = 0  # each count sent at once, from its own thread
    before = counters_read()["claim_checks"]
    monkeypatch.setattr(muster_redis, "_made", {})  # and again: the read above made one
    start = threading.Barrier(32)
    clients: list[object] = []

    def first_send() -> None:
        start.wait()
        clients.append(muster_redis.redis_client())
        counter_incr("claim_checks")

    threads = [threading.Thread(target=first_send) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 1
    assert counters_read()["claim_checks"] == before + 32
