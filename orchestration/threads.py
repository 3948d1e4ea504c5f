"""The server's request threads: the gate on how many run synchronous steps at once, and the
single-thread executors that requests reuse (orchestration/asgi.py's handler and the fast path
both take theirs here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connections

IDLE_REQUEST_THREADS = 64


class Gate:
    """At most `limit` requests' synchronous steps run at once in this process; the rest wait their turn.

    Under a backlog (a burst of reports, a thousand long-polls re-claiming at once) every
    request in flight has its own thread, and runnable threads contending for one GIL
    cost CPU in switching: with 32 clients a report cost 4.9 ms of server CPU against 3.7
    to 4.1 ms one at a time, and more under a deeper backlog (bench/request_cpu.py,
    docs/BENCHMARKS.md). Waiting threads sleep on the semaphore instead. A step that runs inside
    another (async_to_sync back into the loop, then a sync step again) runs on the same
    thread, which already holds its turn.

    A step gives its database connections back (to the pool) when its turn ends, as Django
    does at the end of a request with CONN_MAX_AGE = 0 (the only setting the pool allows):
    otherwise a request waiting for its turn could hold the pooled connection that every
    step holding a turn waits for.
    """

    def __init__(self, limit: int) -> None:
        self.turns = threading.BoundedSemaphore(limit)
        self.held = threading.local()

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.held, "turn", False):
            return fn(*args, **kwargs)
        with self.turns:
            self.held.turn = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.held.turn = False
                _give_back_connections()


def _give_back_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            continue
        if conn.settings_dict["CONN_MAX_AGE"] == 0:
            conn.close()
        else:  # what request_finished's close_old_connections does
            conn.close_if_unusable_or_obsolete()


class GatedExecutor(ThreadPoolExecutor):
    """A request's single thread, whose work items wait for their turn at GATE."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(GATE.run, fn, *args, **kwargs)


class RequestThreads:
    """Single-thread executors for requests' synchronous work, reused from one request to the next.

    Django's handler gives every request a fresh one, so every request that runs any sync
    code (a view, a database step) starts a thread and joins it afterwards: about a fifth of
    a small request's cost here. The semantics stay Django's: one request's sync calls run
    one at a time on one thread, which serves no other request meanwhile.
    """

    def __init__(self, idle_max: int = IDLE_REQUEST_THREADS) -> None:
        self.idle: list[ThreadPoolExecutor] = []
        self.idle_max = idle_max
        self.lock = threading.Lock()

    def take(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return GatedExecutor(max_workers=1, thread_name_prefix="request")

    def give(self, executor: ThreadPoolExecutor) -> None:
        with self.lock:
            if len(self.idle) < self.idle_max:
                self.idle.append(executor)
                return
        executor.shutdown(wait=False)


GATE = Gate(settings.REQUEST_STEPS_RUNNING)
REQUEST_THREADS = RequestThreads()
