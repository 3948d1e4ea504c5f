"""ASGI entry point (gunicorn with uvicorn workers, or uvicorn).

Django's handler serves HTTP, except the agents' claims and reports, which go straight to
their functions (orchestration/fastpath.py); this wrapper also answers ASGI lifespan
events and runs the server heartbeat (core/servicebeat.py) in each server process.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.db import DatabaseError, close_old_connections, connections, reset_queries

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
get_asgi_application()  # django.setup(): the settings and the app registry, before any app's module

# ruff: noqa: E402 - every import below needs the setup above
from django.conf import settings

from accounts.actor import SYSTEM
from actions.services import actions_sync
from core.counters import counters_flush
from core.errors import ServiceError
from core.servicebeat import beat_forever
from orchestration.fastpath import route, serve
from orchestration.threads import REQUEST_THREADS
from workers.ingest import INGEST


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
        _beat["task"] = asyncio.get_running_loop().create_task(beat_forever())


async def _flush_reports() -> None:
    """Write the reports still queued in this process before it exits."""

    def flush() -> None:
        try:
            INGEST.flush()
            counters_flush()
        finally:
            connections.close_all()

    await sync_to_async(flush, thread_sensitive=False)()


async def _sync_actions() -> None:
    """Custom actions from CUSTOM_ACTIONS_FILE, by name, as each server process starts."""

    if not settings.CUSTOM_ACTIONS_FILE:
        return

    def sync() -> None:
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
        await serve(fast, scope, receive, send)
        return
    await django_application(scope, receive, send)
