"""Counters for /metrics: gathered in the process, sent to Redis in one round trip per interval."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestration.counters import COUNTS, counter_incr, counters_flush, counters_read


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
