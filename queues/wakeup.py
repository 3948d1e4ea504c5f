"""Wake-ups for agents waiting on queues, without a thundering herd.

After an enqueue commits, `notify_queues` publishes the queue ids on Redis (when
configured) and pokes this process's hub. Each server process runs one hub: a single
Redis subscription (not one per waiter) that hands each message to one local waiter of
that queue. A Redis counter per message lets only the first process that sees it wake
someone, so one enqueue causes one claim attempt (two when a woken waiter could not use
it and passes it on). Without Redis, a wake-up is immediate inside the process, and a
waiter also re-checks the database at most every CROSS_PROCESS_CHECK_S across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from django.conf import settings
from django.db import transaction

from core.redis import redis_client

log = logging.getLogger(__name__)
CHANNEL_PREFIX = "muster:queue:"
PASS_ON_HOPS = 4


# Called (after the commit) with the queues that just got work: the autoscalers register one,
# which wakes the apps serving those queues (autoscalers/apps.py). A listener's failure costs a
# wake-up, never the enqueue.
ENQUEUE_LISTENERS: list[Callable[[list[str]], None]] = []


def notify_queues(queue_ids: Iterable[str]) -> None:
    """Tell waiters on these queues that work arrived, once the transaction commits."""
    ids = sorted(set(queue_ids))
    if ids:
        transaction.on_commit(lambda: _after_enqueue(ids))


def _after_enqueue(ids: list[str]) -> None:
    publish(ids)
    for listener in ENQUEUE_LISTENERS:
        try:
            listener(ids)
        except Exception:
            log.warning("an enqueue listener failed", exc_info=True)


def publish(queue_ids: list[str], hops: int = 0) -> None:
    """Publish now (callers are after commit): Redis for other processes, the hub for this one."""
    message_id = f"{secrets.token_hex(8)}:{hops}"
    if settings.REDIS_URL:
        try:
            client = redis_client()
            for queue_id in queue_ids:
                client.publish(CHANNEL_PREFIX + queue_id, message_id.encode())
            return
        except Exception:  # a lost wake-up costs latency, never correctness: waiters re-check
            log.warning("could not publish a queue wake-up", exc_info=True)
    HUB.deliver(queue_ids, message_id)


@dataclass(eq=False)
class Waiter:
    """One waiting request: the queues it listens to, its event loop and the event that wakes it."""

    queue_ids: frozenset[str]
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)
    message_id: str = ""
    woken: bool = False


class Hub:
    """The per-process dispatcher of wake-ups to waiting requests (on any event loop)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: list[Waiter] = []
        self.listeners: dict[asyncio.AbstractEventLoop, tuple[asyncio.Task[None], asyncio.Event]] = {}

    @contextlib.asynccontextmanager
    async def waiting(self, queue_ids: Iterable[str]) -> AsyncIterator[Waiter]:
        """Register before checking the database, so no wake-up between check and wait is lost."""
        loop = asyncio.get_running_loop()
        if settings.REDIS_URL:
            listener = self.listeners.get(loop)
            if listener is None or listener[0].done():
                ready = asyncio.Event()
                # Its own empty context: it outlives the request that happened to start it.
                listener = (asyncio.create_task(self._listen(ready), context=contextvars.Context()), ready)
                self.listeners = {lp: ls for lp, ls in self.listeners.items() if not lp.is_closed()}
                self.listeners[loop] = listener
            # Subscribed before the caller checks the database, or nothing between is caught.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener[1].wait(), timeout=2)
        waiter = Waiter(frozenset(queue_ids), loop)
        with self.lock:
            self.waiters.append(waiter)
        try:
            yield waiter
        finally:
            with self.lock:
                self.waiters.remove(waiter)

    def listening(self, loop: asyncio.AbstractEventLoop) -> bool:
        """This loop's Redis listener is subscribed and running (no wake-up can have been missed)."""
        listener = self.listeners.get(loop)
        return listener is not None and not listener[0].done() and listener[1].is_set()

    def rearm(self, waiter: Waiter) -> None:
        """The waiter goes back to waiting (after a check that found nothing)."""
        with self.lock:
            waiter.woken = False
            waiter.message_id = ""
            waiter.event.clear()

    def has_waiter(self, queue_id: str) -> bool:
        with self.lock:
            return any(queue_id in w.queue_ids and not w.woken for w in self.waiters)

    def deliver(self, queue_ids: Iterable[str], message_id: str) -> bool:
        """Wake the longest-waiting idle waiter of any of these queues (one, not all); any thread."""
        wanted = set(queue_ids)
        with self.lock:
            for waiter in self.waiters:
                if not waiter.woken and waiter.queue_ids & wanted and not waiter.loop.is_closed():
                    waiter.woken = True
                    waiter.message_id = message_id
                    waiter.loop.call_soon_threadsafe(waiter.event.set)
                    return True
        return False

    async def _listen(self, ready: asyncio.Event) -> None:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            pubsub = client.pubsub()
            await pubsub.psubscribe(CHANNEL_PREFIX + "*")
            ready.set()
            async for message in pubsub.listen():
                if message.get("type") != "pmessage":
                    continue
                queue_id = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
                message_id = message["data"].decode()
                if not self.has_waiter(queue_id):
                    continue
                # Only the first listener to count this message (in any process) wakes anyone.
                key = f"muster:wake:{queue_id}:{message_id}"
                if await client.incr(key) == 1:
                    await client.expire(key, 30)
                    self.deliver([queue_id], message_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("the wake-up listener stopped; waiters fall back to their deadline", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


HUB = Hub()


def pass_on(queue_ids: Iterable[str], message_id: str) -> None:
    """A woken waiter could not use the work: offer it to another waiter, a few hops at most."""
    hops = int(message_id.rsplit(":", 1)[-1] or 0) if ":" in message_id else 0
    if hops < PASS_ON_HOPS:
        publish(sorted(queue_ids), hops + 1)
