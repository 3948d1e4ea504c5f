"""Time series: queue and fleet samples, rollups by level, retention, reads of any span."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from experiments.models import Experiment
from queues.models import Queue, QueueEntry
from workers import timeseries
from workers.models import Rollup, Worker, WorkerStat

NOW = timezone.now().replace(second=0, microsecond=0)


def _raw(worker: Worker, *, hours: float, every_s: int, end: Any = NOW) -> int:
    rows = []
    n = int(hours * 3600 / every_s)
    for i in range(n):
        at = end - timedelta(seconds=every_s * (n - i))
        rows.append(
            WorkerStat(
                worker=worker, at=at, cpu_percent=float(i % 100), cpu_per_core=[10.0, 30.0],
                memory_used_mb=1000.0, gpus=[{"index": 0, "util": 50.0, "ecc_errors": i % 3}], running=1,
            )
        )  # fmt: skip
    WorkerStat.objects.bulk_create(rows, batch_size=2000)
    return n


def test_three_hours_of_five_second_reports_come_back_as_at_most_1000_points(
    make_worker: Callable[..., Worker],
) -> None:
    w = make_worker("ts:0")
    _raw(w, hours=3, every_s=5)
    s = timeseries.series("worker", "ts:0", 3 * 3600, now=NOW)
    assert s.level == 0 and s.bucket_s == 11
    assert 900 <= len(s.points) <= 1000
    point = s.points[-1]
    assert point["cpu_per_core"] == [10.0, 30.0] and point["gpus"][0]["util"] == 50.0
    assert point["gpus"][0]["ecc_errors"] == 2  # counters keep their maximum


@pytest.mark.parametrize(("span", "level"), [("6h", 60), ("12h", 60), ("1d", 600), ("7d", 3600), ("30d", 3600)])
def test_spans_of_six_hours_or_more_read_rollups_and_their_newest_part_from_finer_levels(
    make_worker: Callable[..., Worker], span: str, level: int
) -> None:
    w = make_worker("ts:1")
    _raw(w, hours=30, every_s=60)
    written = timeseries.stats_rollup(now=NOW)
    assert written[60] >= 30 * 60 - 2 and written[600] > 0 and written[3600] > 0
    with CaptureQueriesContext(connection) as ctx:
        s = timeseries.series("worker", "ts:1", timeseries.parse_span(span), now=NOW)
    assert s.level == level
    assert 0 < len(s.points) <= 1000
    # The level's own rows, then each finer level's (and the raw rows') newer part: one query each.
    sql = [q["sql"] for q in ctx.captured_queries]
    assert "workers_rollup" in sql[0] and len(sql) <= 1 + timeseries.LEVELS.index(level) + 1
    assert s.points[-1]["cpu_per_core"] == [10.0, 30.0]
    assert (NOW - s.points[-1]["at"]).total_seconds() <= s.bucket_s + 60  # not behind by a rollup's lag


@pytest.mark.parametrize("span", ["3h", "6h", "1d", "7d", "30d"])
def test_every_span_shows_ten_minutes_of_data_before_any_rollup(make_worker: Callable[..., Worker], span: str) -> None:
    w = make_worker("ts:young")
    _raw(w, hours=10 / 60, every_s=5)
    s = timeseries.series("worker", "ts:young", timeseries.parse_span(span), now=NOW)
    assert s.points, span
    assert (NOW - s.points[-1]["at"]).total_seconds() <= s.bucket_s + 5
    assert (s.points[0]["at"] - (NOW - timedelta(minutes=10))).total_seconds() <= s.bucket_s


def test_counts_roll_up_to_whole_numbers(make_queue: Callable[..., Queue]) -> None:
    """A fleet of 3 or 4 workers never reads 3.797 at a coarse level: counts keep each bucket's peak."""
    for i in range(120):
        at = NOW - timedelta(hours=3) + timedelta(seconds=30 * i)
        Rollup.objects.create(
            kind="fleet", key="", level=0, at=at,
            values={"workers_total": 3 + (i % 5 == 0), "workers_active": i % 2, "wait_avg_s": float(i)},
        )  # fmt: skip
    timeseries.stats_rollup(now=NOW)
    s = timeseries.series("fleet", "", timeseries.parse_span("1d"), now=NOW)
    assert s.level == 600 and s.points
    totals = [p["workers_total"] for p in s.points]
    assert all(isinstance(t, int) for t in totals) and set(totals) <= {3, 4} and 4 in totals
    assert {p["workers_active"] for p in s.points} <= {0, 1}
    assert any(p["wait_avg_s"] % 1 for p in s.points)  # other numbers are means


def test_rollups_are_weighted_means_and_each_bucket_is_written_once(make_worker: Callable[..., Worker]) -> None:
    w = make_worker("ts:2")
    base = NOW - timedelta(hours=2)
    WorkerStat.objects.bulk_create(
        [WorkerStat(worker=w, at=base + timedelta(seconds=s), cpu_percent=v) for s, v in ((0, 10), (20, 20), (40, 60))]
    )
    timeseries.stats_rollup(now=NOW)
    timeseries.stats_rollup(now=NOW)  # again: nothing new, nothing twice
    minute = Rollup.objects.get(kind="worker", key="ts:2", level=60)
    assert (minute.samples, minute.values["cpu_percent"]) == (3, 30.0)
    ten = Rollup.objects.get(kind="worker", key="ts:2", level=600)
    assert (ten.samples, ten.values["cpu_percent"]) == (3, 30.0)


def test_queue_and_fleet_samples(
    make_queue: Callable[..., Queue], make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker]
) -> None:
    q = make_queue("sampled")
    make_worker("ts:3", queues=[q])
    a = make_experiment(queue=q)
    make_experiment(queue=q)
    QueueEntry.objects.filter(experiment=a).update(added_at=NOW - timedelta(seconds=100))
    QueueEntry.objects.exclude(experiment=a).update(added_at=NOW - timedelta(seconds=20))
    timeseries.stats_sample(now=NOW)
    point = Rollup.objects.get(kind="queue", key=q.pk, level=0).values
    assert point["length"] == 2 and point["listening"] == 1 and point["busy"] == 0
    assert point["wait_max_s"] == pytest.approx(100, abs=1) and point["wait_avg_s"] == pytest.approx(60, abs=1)
    fleet = Rollup.objects.get(kind="fleet", level=0).values
    assert fleet["workers_total"] == 1 and fleet["queued"] == 2 and fleet["running"] == 0
    assert fleet["queue_length_avg"] == 2.0  # the mean over queues (one here)
    s = timeseries.series("fleet", "", 3 * 3600, now=NOW + timedelta(seconds=1))
    assert s.points[-1]["queued"] == 2


def test_fleet_reads_precomputed_points_not_live_counts(make_queue: Callable[..., Queue]) -> None:
    make_queue("fleet-q")
    timeseries.stats_sample(now=NOW - timedelta(seconds=30))
    with CaptureQueriesContext(connection) as ctx:
        timeseries.series("fleet", "", 3 * 3600, now=NOW)
    sql = " ".join(q["sql"] for q in ctx.captured_queries)
    assert len(ctx.captured_queries) == 1 and 'workers_worker"' not in sql and "queues_queueentry" not in sql


def test_retention_per_level(make_worker: Callable[..., Worker], settings: Any) -> None:
    w = make_worker("ts:4")
    old = NOW - timedelta(days=500)
    WorkerStat.objects.create(worker=w, at=NOW - timedelta(hours=49))
    WorkerStat.objects.create(worker=w, at=NOW - timedelta(hours=1))
    for level, age in ((0, timedelta(hours=49)), (60, timedelta(days=4)), (600, timedelta(days=41)), (3600, old - NOW)):
        Rollup.objects.create(kind="fleet", key="", level=level, at=NOW - abs(age), values={})
    Rollup.objects.create(kind="fleet", key="", level=600, at=NOW - timedelta(days=39), values={})
    done = timeseries.stats_purge(now=NOW)
    assert done["worker_raw"] == 1 and WorkerStat.objects.count() == 1
    assert done["rollup_0"] == done["rollup_60"] == done["rollup_600"] == done["rollup_3600"] == 1
    assert list(Rollup.objects.values_list("level", flat=True)) == [600]


@pytest.mark.parametrize("bad", ["2y", "abc", "1m", "40d", "-3h", ""])
def test_a_bad_span_is_a_400_naming_it(admin_api: Any, make_worker: Callable[..., Worker], bad: str) -> None:
    make_worker("ts:5")
    r = admin_api.get("/api/v1/workers/ts:5/stats/", {"span": bad})
    if bad == "":
        assert r.status_code == 200
    else:
        assert r.status_code == 400 and r.json()["error"]["field"] == "span"


def test_stats_endpoints(
    admin_api: Any, make_worker: Callable[..., Worker], make_queue: Callable[..., Queue],
    make_experiment: Callable[..., Experiment],
) -> None:  # fmt: skip
    w = make_worker("ts:6")
    _raw(w, hours=1, every_s=30, end=timezone.now())
    q = make_queue("statq")
    exp = make_experiment(queue=q)
    timeseries.stats_sample()
    r = admin_api.get("/api/v1/workers/ts:6/stats/", {"span": "3h"})
    assert r.status_code == 200 and len(r.json()["points"]) == 120 and r.json()["level"] == 0
    r = admin_api.get(f"/api/v1/queues/{q.pk}/stats/", {"span": "6h"})
    assert r.status_code == 200 and r.json()["level"] == 60
    assert admin_api.get("/api/v1/stats/fleet/").status_code == 200
    r = admin_api.get(f"/api/v1/experiments/{exp.pk}/stats/")
    assert r.status_code == 404 and r.json()["error"]["field"] == "attempt"
    assert admin_api.get("/api/v1/workers/nobody/stats/").status_code == 404
