"""One Redis client per process, made on first use."""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_lock = threading.Lock()
_made: dict[str, redis.Redis] = {}  # "client": the process's one client, once made


def redis_client() -> redis.Redis:
    """The process's one client (its pool is thread-safe), made once even when threads race.

    Two clients made at once would not be harmless: the one not kept is collected, and
    redis-py's Redis.__del__ closes its pool, disconnecting the connection that a pipeline
    made from it is still using (a counter send then timed out or read a closed socket).
    """
    client = _made.get("client")
    if client is None:
        with _lock:
            if "client" not in _made:
                _made["client"] = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
            client = _made["client"]
    return client
