"""The API server's own heartbeat, written by every server process every SERVER_BEAT_S seconds.

`server_beat()` records that a server is alive; when the last beat is older than three
intervals the server was away (or restarted) and `up_since` moves to now. The liveness
checker gives no verdicts while the server is away and gives every worker two timeouts
after it is back.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from core.models import ServiceBeat

log = logging.getLogger(__name__)
SERVER = "server"


def away_after() -> timedelta:
    return timedelta(seconds=3 * settings.SERVER_BEAT_S)


def server_beat(now: datetime | None = None) -> None:
    """Record a beat. Every server process starts by beating, so the first beats race:
    the row is made with ON CONFLICT DO NOTHING and then locked, never inserted twice."""
    now = now or timezone.now()
    with transaction.atomic():
        ServiceBeat.objects.bulk_create([ServiceBeat(name=SERVER, alive_at=now, up_since=now)], ignore_conflicts=True)
        row = ServiceBeat.objects.select_for_update().get(name=SERVER)
        if now - row.alive_at > away_after():
            row.up_since = now
        row.alive_at = max(row.alive_at, now)
        row.save(update_fields=["alive_at", "up_since"])


def server_state(now: datetime) -> tuple[bool, datetime | None]:
    """(away, up_since): away when servers beat but the last beat is too old; None when none ever beat."""
    row = ServiceBeat.objects.filter(name=SERVER).first()
    if row is None:
        return False, None
    return now - row.alive_at > away_after(), row.up_since


def _beat_once() -> None:
    try:
        server_beat()
    except Exception:  # the beat must never take a server process down
        log.warning("could not record the server heartbeat", exc_info=True)
    finally:
        connections.close_all()


async def beat_forever() -> None:
    while True:
        await sync_to_async(_beat_once, thread_sensitive=False)()
        await asyncio.sleep(settings.SERVER_BEAT_S)
