"""orchestration/threads.py: Gate: at most N requests' sync steps run at once; each step gives its connections back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
from django.db import connection

from orchestration import threads
from orchestration.threads import Gate, GatedExecutor


def test_no_more_than_the_limit_run_at_once_and_every_step_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "GATE", Gate(3))
    lock = threading.Lock()
    running, most, done = [0], [0], []

    def step(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        done.append(i)
        return i

    executors = [GatedExecutor(max_workers=1) for _ in range(12)]
    futures: list[Future[int]] = [ex.submit(step, i) for i, ex in enumerate(executors)]
    assert sorted(f.result(timeout=10) for f in futures) == list(range(12))
    assert most[0] == 3
    for ex in executors:
        ex.shutdown()


def test_a_step_inside_a_step_on_the_same_thread_keeps_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate(1)
    monkeypatch.setattr(threads, "GATE", gate)
    ex = GatedExecutor(max_workers=1)
    # As async_to_sync inside a sync step brings a nested sync step back to the same thread.
    assert ex.submit(lambda: gate.run(lambda: "inner")).result(timeout=5) == "inner"
    ex.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_step_gives_its_database_connection_back_unless_in_a_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "GATE", Gate(2))
    ex = GatedExecutor(max_workers=1)

    def query() -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT 1")

    ex.submit(query).result(timeout=10)
    # A waiting request never sits on a pooled connection that the running steps need.
    assert ex.submit(lambda: connection.connection).result(timeout=10) is None
    ex.shutdown()
