"""ASGI entry point (gunicorn with uvicorn workers, or uvicorn).

Django's handler serves HTTP, except the agents' claims and reports, which go straight to
their functions (orchestration/fastpath.py); this wrapper also answers ASGI lifespan
events and runs the server heartbeat (core/servicebeat.py) in each server process.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections, reset_queries

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
get_asgi_application()  # django.setup()

from django.conf import settings  # noqa: E402 - after setup

from orchestration.fastpath import route, serve  # noqa: E402 - after setup

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
    from django.db import connections

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


class Handler(ASGIHandler):
    """Django's ASGI handler, with its per-request thread taken from REQUEST_THREADS."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = REQUEST_THREADS.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            REQUEST_THREADS.give(executor)


django_application = Handler()


def start_requests_without_a_hop() -> None:
    """Leave request_started without sync receivers, so Django's handler makes no thread hop for it.

    Its two receivers close the request thread's stale connections and clear its query
    log. Here every request runs on a reused request thread (REQUEST_THREADS) whose
    connections the previous request's request_finished (still sent, still closing them)
    already gave back, so at the start there is nothing to close: one hop per request
    saved. The query log is bounded (and off without DEBUG).
    """
    signals.request_started.disconnect(close_old_connections)
    signals.request_started.disconnect(reset_queries)


start_requests_without_a_hop()

_beat: dict[str, asyncio.Task[None]] = {}


def _start_beat() -> None:
    if "task" not in _beat or _beat["task"].done():
        from core.servicebeat import beat_forever

        _beat["task"] = asyncio.get_running_loop().create_task(beat_forever())


async def _flush_reports() -> None:
    """Write the reports still queued in this process before it exits."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    from workers.ingest import INGEST

    def flush() -> None:
        from core.counters import counters_flush

        try:
            INGEST.flush()
            counters_flush()
        finally:
            connections.close_all()

    await sync_to_async(flush, thread_sensitive=False)()


async def _sync_actions() -> None:
    """Custom actions from CUSTOM_ACTIONS_FILE, by name, as each server process starts."""
    import logging

    from asgiref.sync import sync_to_async
    from django.conf import settings

    if not settings.CUSTOM_ACTIONS_FILE:
        return

    def sync() -> None:
        from pathlib import Path

        from django.db import DatabaseError, connections

        from accounts.actor import SYSTEM
        from actions.services import actions_sync
        from core.errors import ServiceError

        try:
            actions_sync(actor=SYSTEM, path=Path(settings.CUSTOM_ACTIONS_FILE))
        except (OSError, ValueError, ServiceError, DatabaseError) as e:  # another process may sync at once
            logging.getLogger("muster").warning(
                "custom actions not synced from %s: %s", settings.CUSTOM_ACTIONS_FILE, e
            )
        finally:
            connections.close_all()

    await sync_to_async(sync, thread_sensitive=False)()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _sync_actions()
                _start_beat()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                task = _beat.pop("task", None)
                if task is not None:
                    task.cancel()
                await _flush_reports()
                await send({"type": "lifespan.shutdown.complete"})
                return
    _start_beat()  # servers that send no lifespan events
    fast = route(scope)
    if fast is not None:  # an agent's claim or report (orchestration/fastpath.py)
        await serve(*fast, scope, receive, send)
        return
    await django_application(scope, receive, send)
