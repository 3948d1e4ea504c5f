"""Report ingestion in batches: a report's stats and heartbeat are queued, written by a flusher.

`worker_report` answers from reads alone when a report changes no state (the usual case:
a known, live worker with the same instance, every claim accounted for) and queues what
to write here. Every REPORT_FLUSH_S seconds one thread per server process writes the
queued reports in one transaction: the WorkerStat and AttemptStat rows in bulk, every
worker's last_seen / live_until in one statement, iterations moved forward in one. With
REPORT_FLUSH_S = 0 (tests) the same flush runs inline, in the caller's transaction.
A crash loses at most one flush interval of heartbeats, which the next report replaces.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, connections

from core.db import atomic
from experiments.services import experiments_advance_iterations
from workers.models import AttemptStat, Worker, WorkerStat

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """One report's writes."""

    worker_id: int
    at: datetime
    live_until: datetime
    interval_s: float
    stat: WorkerStat | None
    attempt_stats: list[AttemptStat] = field(default_factory=list)
    iterations: dict[str, int] = field(default_factory=dict)


class Ingest:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Pending] = []
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, item: Pending) -> None:
        if settings.REPORT_FLUSH_S <= 0:
            write([item])
            return
        with self.lock:
            self.items.append(item)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="report-ingest", daemon=True)
                self.thread.start()

    def take(self) -> list[Pending]:
        with self.lock:
            items, self.items = self.items, []
        return items

    def flush(self) -> int:
        items = self.take()
        if items:
            write(items)
        return len(items)

    def _loop(self) -> None:
        while True:
            self.wake.wait(settings.REPORT_FLUSH_S)
            self.wake.clear()
            try:
                self.flush()
            except Exception:  # a failed batch costs stats, never the server
                log.exception("could not write a batch of reports")
            finally:
                connections.close_all()


INGEST = Ingest()


def write(items: list[Pending]) -> None:
    """Write a batch: stats in bulk, one heartbeat per worker (its latest), iterations forward."""
    latest: dict[int, Pending] = {}
    iterations: dict[str, int] = {}
    for item in items:
        if item.worker_id not in latest or latest[item.worker_id].at < item.at:
            latest[item.worker_id] = item
        for attempt_id, it in item.iterations.items():
            iterations[attempt_id] = max(it, iterations.get(attempt_id, it))
    _write_batch(items, [latest[k] for k in sorted(latest)], iterations)


@atomic  # the retrying transaction: a deadlock or serialization failure runs it again, nothing is lost
def _write_batch(items: list[Pending], latest: list[Pending], iterations: dict[str, int]) -> None:
    WorkerStat.objects.bulk_create([i.stat for i in items if i.stat is not None], batch_size=500)
    AttemptStat.objects.bulk_create([s for i in items for s in i.attempt_stats], batch_size=500)
    # Experiments before workers (core/db.py's lock order), each in id order: two flushers, or a
    # flusher and a stop, never wait on each other in a cycle.
    experiments_advance_iterations(iterations)
    _touch(latest)


def _touch(items: list[Pending]) -> None:
    """last_seen_at, live_until, previous_report_at and the interval of many workers, never backwards."""
    if not items:
        return
    table = Worker._meta.db_table
    if connection.vendor == "postgresql":
        values = ", ".join(["(%s, %s::timestamptz, %s::timestamptz, %s::float8)"] * len(items))
        params: list[Any] = []
        for i in items:
            params += [i.worker_id, i.at, i.live_until, i.interval_s]
        # Rows locked in id order first (an UPDATE … FROM locks in its join's order): see above.
        sql = (
            f"WITH v(id, at, until, interval) AS (VALUES {values}), "  # noqa: S608 - constants
            f"locked AS (SELECT w.id FROM {table} w JOIN v ON w.id = v.id ORDER BY w.id FOR UPDATE OF w) "
            f"UPDATE {table} AS w SET last_seen_at = v.at, live_until = v.until, previous_report_at = v.at, "
            "report_interval_s = v.interval FROM v, locked WHERE w.id = v.id AND w.id = locked.id AND w.last_seen_at <= v.at"
        )
        with connection.cursor() as cur:
            cur.execute(sql, params)
        return
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cur:
        cur.executemany(
            f"UPDATE {table} SET last_seen_at = %s, live_until = %s, previous_report_at = %s, "  # noqa: S608 - constants
            "report_interval_s = %s WHERE id = %s AND last_seen_at <= %s",
            [(adapt(i.at), adapt(i.live_until), adapt(i.at), i.interval_s, i.worker_id, adapt(i.at)) for i in items],
        )
