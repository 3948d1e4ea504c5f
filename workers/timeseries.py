"""Time series for workers, attempts, queues and the whole fleet: samples, rollups, retention, reads.

Raw data: a worker's reports (WorkerStat), an attempt's (AttemptStat), and beat's samples
of every queue and of the fleet (Rollup level 0, every STATS_SAMPLE_S). Beat rolls closed
buckets up into 1-minute, 10-minute and 1-hour levels, each kept for its own retention.
A read of any span returns at most MAX_POINTS points: spans under 6 hours read raw rows
(bucketed), longer ones read only the finest rollup level that fits. Nothing here runs
on the claim or report path.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from core.errors import InvalidInput
from core.retention import purge_before
from experiments.models import Attempt
from queues.models import Queue, QueueEntry
from workers.models import AttemptStat, Rollup, Worker, WorkerQueue, WorkerStat, WorkerStatus

LEVELS = (60, 600, 3600)
MAX_POINTS = 1000
RAW_SPAN_LIMIT_S = 6 * 3600
SPAN_MIN_S, SPAN_MAX_S = 600, 31 * 86400
WORKER_FIELDS = (
    "cpu_percent", "cpu_per_core", "memory_used_mb", "memory_free_mb", "gpus", "network_rx_bps",
    "network_tx_bps", "disk_read_bps", "disk_write_bps", "disk_free_mb", "running",
)  # fmt: skip
ATTEMPT_FIELDS = ("cpu_percent", "memory_mb", "gpu_util", "gpu_memory_mb")
KINDS = ("worker", "attempt", "queue", "fleet")
# Counts (of workers, experiments, GPUs) roll up to each bucket's peak: a whole number, never a
# mean such as 3.797 workers. Every other number rolls up to its weighted mean.
COUNT_KEYS = frozenset(
    {"workers_total", "workers_active", "workers_idle", "workers_unresponsive", "queued", "running", "gpus_total",
     "gpus_used", "length", "listening", "busy"}
)  # fmt: skip


def retention() -> dict[int, timedelta]:
    """How long each level is kept (0: raw samples and report rows)."""
    return {
        0: timedelta(hours=settings.STATS_RAW_RETENTION_HOURS),
        60: timedelta(days=settings.STATS_MINUTE_RETENTION_DAYS),
        600: timedelta(days=settings.STATS_TEN_MINUTE_RETENTION_DAYS),
        3600: timedelta(days=settings.STATS_HOUR_RETENTION_DAYS),
    }


# -- combining values --------------------------------------------------------------------------


def _combine(items: Sequence[tuple[Mapping[str, Any], int]]) -> dict[str, Any]:
    """Weighted means of numbers (maxima for *_max keys), element-wise for lists, per index for GPUs."""
    out: dict[str, Any] = {}
    keys = {k for values, _ in items for k in values}
    for key in keys:
        present = [(v[key], w) for v, w in items if v.get(key) is not None]
        if not present:
            out[key] = None
            continue
        first = present[0][0]
        if key == "gpus":
            by_index: dict[int, list[tuple[Mapping[str, Any], int]]] = defaultdict(list)
            for gpus, w in present:
                for g in gpus:
                    by_index[int(g.get("index", 0))].append((g, w))
            out[key] = [{**_combine(rows), "index": i} for i, rows in sorted(by_index.items())]
        elif isinstance(first, list):
            width = min(len(v) for v, _ in present)
            total = sum(w for _, w in present)
            out[key] = [round(sum(v[i] * w for v, w in present) / total, 3) for i in range(width)]
        elif isinstance(first, (int, float)):
            if key.endswith("_max") or key == "ecc_errors" or key in COUNT_KEYS:
                out[key] = max(v for v, _ in present)
            else:
                total = sum(w for _, w in present)
                out[key] = round(sum(float(v) * w for v, w in present) / total, 3)
    return out


def _floor(at: datetime, seconds: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=at.tzinfo)


# -- raw rows of each kind ----------------------------------------------------------------------


def _raw_rows(
    kind: str, key: str | None, start: datetime, end: datetime
) -> Iterator[tuple[str, datetime, dict[str, Any]]]:
    """(series key, time, values) of raw data in [start, end); every series of the kind when key is None."""
    if kind == "worker":
        qs = WorkerStat.objects.filter(at__gte=start, at__lt=end)
        if key is not None:
            qs = qs.filter(worker__name=key)
        for row in qs.order_by("at").values("worker__name", "at", *WORKER_FIELDS).iterator(chunk_size=2000):
            name, at = row.pop("worker__name"), row.pop("at")
            yield name, at, row
    elif kind == "attempt":
        qs_a = AttemptStat.objects.filter(at__gte=start, at__lt=end)
        if key is not None:
            qs_a = qs_a.filter(attempt_id=key)
        for row in qs_a.order_by("at").values("attempt_id", "at", *ATTEMPT_FIELDS).iterator(chunk_size=2000):
            attempt_id, at = row.pop("attempt_id"), row.pop("at")
            yield attempt_id, at, row
    else:
        qs_r = Rollup.objects.filter(kind=kind, level=0, at__gte=start, at__lt=end)
        if key is not None:
            qs_r = qs_r.filter(key=key)
        for series_key, at, values in qs_r.order_by("at").values_list("key", "at", "values").iterator(chunk_size=2000):
            yield series_key, at, values


# -- beat: samples, rollups, retention -----------------------------------------------------------


def _epoch_avg_sql(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"AVG(EXTRACT(EPOCH FROM {column}))"
    return f"AVG((julianday({column}) - 2440587.5) * 86400.0)"


def stats_sample(now: datetime | None = None) -> int:
    """Sample every queue (length, average and max wait, listening and busy workers) and the fleet."""

    now = now or timezone.now()
    at = now.replace(microsecond=0)
    table = QueueEntry._meta.db_table
    waits: dict[str, tuple[int, float | None, datetime | None]] = {}
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT queue_id, COUNT(*), {_epoch_avg_sql('added_at')}, MIN(added_at) FROM {table} GROUP BY queue_id"  # noqa: S608 - constants
        )
        for queue_id, count, avg_epoch, first in cur.fetchall():
            oldest = datetime.fromisoformat(first) if isinstance(first, str) else first  # SQLite hands back text
            if oldest is not None and timezone.is_naive(oldest):
                oldest = timezone.make_aware(oldest, timezone.get_current_timezone())
            waits[str(queue_id)] = (int(count), float(avg_epoch) if avg_epoch is not None else None, oldest)
    alive = ~Q(worker__status__in=[WorkerStatus.LOST, WorkerStatus.UNRESPONSIVE])
    listening = dict(
        WorkerQueue.objects.filter(alive).values("queue_id").annotate(n=Count("worker_id")).values_list("queue_id", "n")
    )
    busy = dict(
        WorkerQueue.objects.filter(worker__status=WorkerStatus.BUSY)
        .values("queue_id")
        .annotate(n=Count("worker_id"))
        .values_list("queue_id", "n")
    )
    points = []
    total_queued = 0
    for queue_id in Queue.objects.values_list("id", flat=True):
        count, avg_epoch, oldest = waits.get(queue_id, (0, None, None))
        total_queued += count
        values = {
            "length": count,
            "wait_avg_s": round(max(0.0, now.timestamp() - avg_epoch), 3) if avg_epoch is not None else 0.0,
            "wait_max_s": round(max(0.0, (now - oldest).total_seconds()), 3) if oldest is not None else 0.0,
            "listening": listening.get(queue_id, 0),
            "busy": busy.get(queue_id, 0),
        }
        points.append(Rollup(kind="queue", key=queue_id, level=0, at=at, values=values))
    by_status = dict(Worker.objects.values("status").annotate(n=Count("id")).values_list("status", "n"))
    capacity = Worker.objects.exclude(status=WorkerStatus.LOST).values_list("gpus", "used_gpus")
    fleet = {
        "workers_total": sum(n for s, n in by_status.items() if s != WorkerStatus.LOST),
        "workers_active": by_status.get(WorkerStatus.BUSY, 0),
        "workers_idle": by_status.get(WorkerStatus.IDLE, 0),
        "workers_unresponsive": by_status.get(WorkerStatus.UNRESPONSIVE, 0),
        "queued": total_queued,
        # all queues together: the mean wait over every queued entry, the longest wait anywhere
        "wait_avg_s": round(
            sum(c * (now.timestamp() - a) for c, a, _ in waits.values() if a is not None) / total_queued, 3
        )
        if total_queued
        else 0.0,
        "wait_max_s": max((p.values["wait_max_s"] for p in points), default=0.0),
        "queue_length_avg": round(total_queued / len(points), 3) if points else 0.0,
        "running": Attempt.objects.filter(finished_at__isnull=True).count(),
        "gpus_total": sum(g for g, _ in capacity),
        "gpus_used": sum(u for _, u in capacity),
    }
    points.append(Rollup(kind="fleet", key="", level=0, at=at, values=fleet))
    Rollup.objects.bulk_create(points, ignore_conflicts=True)
    return len(points)


def _source(level: int) -> int:
    i = LEVELS.index(level)
    return 0 if i == 0 else LEVELS[i - 1]


def stats_rollup(now: datetime | None = None) -> dict[int, int]:
    """Aggregate every closed bucket not rolled up yet, level by level (1 min from raw, then up)."""
    now = now or timezone.now()
    written: dict[int, int] = {}
    for level in LEVELS:
        end = _floor(now - timedelta(seconds=10), level)  # reports a few seconds late still count
        last = Rollup.objects.filter(level=level).aggregate(m=Max("at"))["m"]
        start = last + timedelta(seconds=level) if last else end - retention()[_source(level)]
        start = max(start, end - retention()[_source(level)])
        if start >= end:
            written[level] = 0
            continue
        groups: dict[tuple[str, str, datetime], list[tuple[Mapping[str, Any], int]]] = defaultdict(list)
        source = _source(level)
        for kind in KINDS:
            if source == 0:
                for key, at, values in _raw_rows(kind, None, start, end):
                    groups[(kind, key, _floor(at, level))].append((values, 1))
            else:
                rows = Rollup.objects.filter(kind=kind, level=source, at__gte=start, at__lt=end)
                for key, at, values, samples in rows.values_list("key", "at", "values", "samples").iterator(
                    chunk_size=2000
                ):
                    groups[(kind, key, _floor(at, level))].append((values, samples))
        points = [
            Rollup(kind=kind, key=key, level=level, at=at, samples=sum(w for _, w in items), values=_combine(items))
            for (kind, key, at), items in groups.items()
        ]
        with transaction.atomic():
            Rollup.objects.bulk_create(points, batch_size=1000, ignore_conflicts=True)
        written[level] = len(points)
    return written


def stats_purge(now: datetime | None = None) -> dict[str, int]:
    """Delete what is older than each level's retention, in bounded batches."""

    now = now or timezone.now()
    keep = retention()
    done = {
        "worker_raw": purge_before(WorkerStat, "at", now - keep[0]),
        "attempt_raw": purge_before(AttemptStat, "at", now - keep[0]),
    }
    for level, span in keep.items():
        done[f"rollup_{level}"] = purge_before(Rollup, "at", now - span, level=level)
    return done


# -- reads -------------------------------------------------------------------------------------


@dataclass
class Series:
    kind: str
    key: str
    span_s: int
    level: int  # 0: raw rows, bucketed by `bucket_s`
    bucket_s: int
    points: list[dict[str, Any]]


def parse_span(value: str | None, default: int = 3 * 3600) -> int:
    """'3h', '6h', '1d', '30d', '90m' or seconds; from 10 minutes to 31 days."""

    if not value:
        return default
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = value.strip().lower()
    try:
        seconds = int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)
    except (ValueError, KeyError, IndexError):
        raise InvalidInput(f"span must look like 3h, 6h, 1d or 30d, not {value!r}", field="span") from None
    if not SPAN_MIN_S <= seconds <= SPAN_MAX_S:
        raise InvalidInput("span must be from 10 minutes to 31 days", field="span")
    return seconds


def level_for(span_s: int) -> int:
    """Raw rows for spans under 6 hours; otherwise the finest rollup with at most MAX_POINTS buckets."""
    if span_s < RAW_SPAN_LIMIT_S:
        return 0
    for level in LEVELS:
        if span_s / level <= MAX_POINTS:
            return level
    return LEVELS[-1]


def series(kind: str, key: str, span_s: int, now: datetime | None = None) -> Series:
    """The points of one series over the span ending `now`, at most MAX_POINTS.

    A span reads its rollup level; where that level has no buckets yet (the newest part, not
    rolled up so far, or everything on a young server), it reads the next finer level, down to
    the raw rows. So every span shows the same recent data, whatever beat has rolled up.
    """
    now = now or timezone.now()
    start = now - timedelta(seconds=span_s)
    level = level_for(span_s)
    bucket = max(level, math.ceil(span_s / MAX_POINTS))
    groups: dict[datetime, list[tuple[Mapping[str, Any], int]]] = defaultdict(list)
    cursor = _floor(start, level) if level else start
    for finer in [lv for lv in (0, *LEVELS) if lv <= level][::-1]:
        if cursor >= now:
            break
        if finer == 0:
            for _, at, values in _raw_rows(kind, key, max(cursor, start), now):
                groups[_floor(at, bucket)].append((values, 1))
            break
        rows = Rollup.objects.filter(kind=kind, key=key, level=finer, at__gte=cursor, at__lt=now)
        last = None
        for at, values, samples in rows.order_by("at").values_list("at", "values", "samples"):
            groups[_floor(at, bucket)].append((values, samples))
            last = at
        if last is not None:
            cursor = last + timedelta(seconds=finer)
    # A bucket holding one row (the usual case when reading rollups) needs no combining.
    points = [
        {"at": at, **(dict(items[0][0]) if len(items) == 1 else _combine(items))}
        for at, items in sorted(groups.items())
    ]
    return Series(kind=kind, key=key, span_s=span_s, level=level, bucket_s=bucket, points=points[-MAX_POINTS:])


def series_keys(kind: str) -> Iterable[str]:
    return Rollup.objects.filter(kind=kind, level=0).values_list("key", flat=True).distinct()
