"""Server time of every page and partial at scale, on PostgreSQL.

Seeds with generate_series (no ORM): 1,000 workers (each running one experiment, listening to
two queues), 200 queues, 100,000 queued experiments, and 30 days of rolled-up stats for every
worker, queue and the fleet (hourly for 30 days, 10-minute for a day, 1-minute for 12 hours,
raw samples for 3 hours). Then, in this process with the production settings, renders each
page through Django's test client, timing the server work (no network) and counting SQL
queries. The baseline is /healthz in the same run.

    .venv/bin/python bench/pages.py [--rounds 15]

Ends with: RESULT pages p50_ms=… p95_ms=… max_queries=… slowest=…
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_SETTINGS, machine, percentile, prepared_database, services

WORKERS, QUEUES, QUEUED, DAYS = 1000, 200, 100_000, 30

SEED = """
INSERT INTO queues_queue (id, name, display_name, tags, system_tags, paused, created_at, updated_at)
SELECT md5('q' || g), 'queue-' || lpad(g::text, 3, '0'), '', '[]', '[]', g % 50 = 0, now(), now()
FROM generate_series(1, {QUEUES}) g;

INSERT INTO workers_worker (name, kind, instance_id, hostname, tags, status, draining, drain_reason, gpu_slots, gpus,
    cpus, memory_mb, capabilities, order_fairness, agent_version, timeout_s, registered_at, last_seen_at, live_until,
    gpu_models, declared_queues, used_cpus, used_gpus, used_memory_mb, report_interval_s, ip, runtime_properties)
SELECT 'gpu-node-' || lpad(g::text, 4, '0'), 'muster', 'i' || g, 'node' || g, '[]', 'busy', false, '',
    '[{"index": 0, "model": "nvidia a100"}, {"index": 1, "model": "nvidia a100"}]', 2, 32, 256000, 31, false, '0.1.0', 0,
    now() - interval '1 day', now(), now() + interval '1 hour', '["a100"]', '[]', 1, 1, 1000, 5,
    ('10.0.' || (g / 250) || '.' || (g % 250 + 1))::inet, '[]'
FROM generate_series(1, {WORKERS}) g;

INSERT INTO workers_workerqueue ("order", queue_id, worker_id)
SELECT k, md5('q' || ((w.id + k) % {QUEUES} + 1)), w.id FROM workers_worker w, generate_series(0, 1) k;

INSERT INTO experiments_experiment (id, name, project, tags, command, script, working_dir, repository, branch, commit,
    diff, entry_point, snapshot, requirements, python_version, container_image, container_args, setup_script, env,
    secret_env, parameters, gpus, gpu_type, cpus, memory_mb, priority, retry_policy, stop_signal, stop_grace_s, status,
    status_reason, status_message, enqueue_status, retry_count, created_at, updated_at, last_metrics, runtime, owner_id,
    queue_id, queued_at)
SELECT md5('e' || g), 'sweep-' || g, 'proj-' || (g % 20), '[]', '["python", "train.py"]', '', '', '', '', '', '', '',
    '', '', '', '', '[]', '', '{}', '{}', '{"lr": 0.1}', 1, '', 1, 0, 0, '{}', 'SIGTERM', 60, 'queued', '', '', 'created',
    0, now() - (g || ' seconds')::interval, now(), '{}', '{}', (SELECT id FROM auth_user ORDER BY id LIMIT 1),
    md5('q' || (g % {QUEUES} + 1)), now() - (g || ' seconds')::interval
FROM generate_series(1, {QUEUED}) g;

INSERT INTO queues_queueentry (priority, position, added_at, gpus, gpu_type, cpus, memory_mb, needs, experiment_id, queue_id)
SELECT 0, g, now() - (g || ' seconds')::interval, 1, '', 1, 0, 0, md5('e' || g), md5('q' || (g % {QUEUES} + 1))
FROM generate_series(1, {QUEUED}) g;

-- one running experiment per worker
INSERT INTO experiments_experiment (id, name, project, tags, command, script, working_dir, repository, branch, commit,
    diff, entry_point, snapshot, requirements, python_version, container_image, container_args, setup_script, env,
    secret_env, parameters, gpus, gpu_type, cpus, memory_mb, priority, retry_policy, stop_signal, stop_grace_s, status,
    status_reason, status_message, enqueue_status, retry_count, created_at, updated_at, last_metrics, runtime, owner_id,
    queue_id, started_at, last_iteration)
SELECT md5('r' || w.id), 'train-' || w.id, 'proj-1', '[]', '["python", "train.py"]', '', '', '', '', '', '', '', '', '',
    '', '', '[]', '', '{}', '{}', '{}', 1, '', 1, 0, 0, '{}', 'SIGTERM', 60, 'in_progress', '', '', '', 0,
    now() - interval '2 hours', now(), '{"loss": 0.1}', '{}', (SELECT id FROM auth_user ORDER BY id LIMIT 1),
    md5('q' || (w.id % {QUEUES} + 1)), now() - interval '1 hour', 1000 + w.id
FROM workers_worker w;

INSERT INTO experiments_attempt (id, number, worker_name, lease_token, gpus, cpus, memory_mb, gpu_indexes, claimed_at,
    started_at, outcome, failure_class, message, fenced, log_head_bytes, log_tail_bytes, log_truncated,
    resource_summary, frozen_requirements, experiment_id, worker_id, queue_id)
SELECT md5('a' || w.id), 1, w.name, md5('t' || w.id), 1, 1, 0, '[0]', now() - interval '1 hour',
    now() - interval '1 hour', '', '', '', false, 0, 0, false, '{}', '', md5('r' || w.id), w.id,
    md5('q' || (w.id % {QUEUES} + 1))
FROM workers_worker w;
UPDATE experiments_experiment SET current_attempt_id = md5('a' || substr(name, 7)) WHERE status = 'in_progress';

-- time series: rollups per worker, queue and the fleet, and raw samples for the last 3 hours
CREATE TEMP TABLE series_keys AS
    SELECT 'worker' AS kind, name AS key FROM workers_worker
    UNION ALL SELECT 'queue', id FROM queues_queue
    UNION ALL SELECT 'fleet', '';
CREATE TEMP TABLE levels (level int, span interval);
INSERT INTO levels VALUES (3600, interval '{DAYS} days'), (600, interval '1 day'), (60, interval '12 hours'),
    (0, interval '3 hours');
INSERT INTO workers_rollup (kind, key, level, at, samples, "values")
SELECT s.kind, s.key, l.level, t, 1,
    CASE s.kind
      WHEN 'worker' THEN jsonb_build_object('cpu_percent', 50 + 40 * sin(extract(epoch FROM t) / 3600),
          'memory_used_mb', 120000, 'network_rx_bps', 1e6, 'network_tx_bps', 2e5, 'running', 1,
          'gpus', '[{"index": 0, "util": 80, "memory_used_mb": 60000}, {"index": 1, "util": 70, "memory_used_mb": 50000}]'::jsonb)
      WHEN 'queue' THEN jsonb_build_object('length', 500, 'wait_avg_s', 1800, 'wait_max_s', 3600, 'listening', 10, 'busy', 10)
      ELSE jsonb_build_object('workers_total', {WORKERS}, 'workers_active', 900, 'queued', {QUEUED},
          'wait_avg_s', 1800, 'wait_max_s', 3600)
    END
FROM series_keys s
JOIN levels l ON l.level > 0 OR s.kind <> 'worker'
CROSS JOIN LATERAL generate_series(
    date_trunc('hour', now() - l.span), now() - interval '1 minute',
    make_interval(secs => CASE WHEN l.level = 0 THEN 60 ELSE l.level END)) t;
INSERT INTO workers_workerstat (worker_id, at, cpu_percent, cpu_per_core, memory_used_mb, memory_free_mb, gpus,
    network_rx_bps, network_tx_bps, running)
SELECT w.id, t, 50, '[]', 120000, 100000,
    '[{"index": 0, "util": 80, "memory_used_mb": 60000}, {"index": 1, "util": 70, "memory_used_mb": 50000}]', 1e6, 2e5, 1
FROM workers_worker w CROSS JOIN generate_series(now() - interval '3 hours', now(), interval '60 seconds') t;
ANALYZE;
"""


def seed(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        sql = SEED
        for name, value in (("WORKERS", WORKERS), ("QUEUES", QUEUES), ("QUEUED", QUEUED), ("DAYS", DAYS)):
            sql = sql.replace("{" + name + "}", str(value))
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(statement)
        counts = {}
        for table in ("workers_worker", "queues_queue", "queues_queueentry", "experiments_experiment",
                      "workers_rollup", "workers_workerstat"):  # fmt: skip
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


class QueryCounter:
    """A database execute wrapper that counts the SQL statements of one request."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


def measure(rounds: int) -> list[tuple[str, float, float, int]]:
    import django  # noqa: PLC0415 - the measuring child alone loads Django (with the bench's settings)

    django.setup()
    # Imported here, after django.setup(): models and the test client need the app registry.
    from django.contrib.auth.models import User  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415

    client = Client()
    client.force_login(User.objects.get(username="admin"))
    busiest = connection.cursor()
    busiest.execute("SELECT queue_id FROM queues_queueentry GROUP BY queue_id ORDER BY count(*) DESC LIMIT 1")
    queue_id = busiest.fetchone()[0]
    busiest.execute(
        "SELECT experiment_id FROM queues_queueentry WHERE queue_id = %s ORDER BY position DESC LIMIT 1", [queue_id]
    )
    deep = busiest.fetchone()[0]
    running = hashlib.md5(b"r1").hexdigest()  # noqa: S324 - the seed's ids, not security
    worker = "gpu-node-0001"
    urls = {
        "baseline /healthz": "/healthz",
        "workers page": "/orchestration/workers/",
        "workers rows (sorted by runtime)": "/orchestration/workers/rows/?sort=-runtime",
        "workers rows (page 5)": "/orchestration/workers/rows/?offset=400",
        "worker page with panel": f"/orchestration/workers/?worker={worker}",
        "worker panel": f"/orchestration/workers/{worker}/panel/",
        "graph fleet 3h": "/orchestration/graphs/workers/?span=3h",
        "graph fleet 1 month": "/orchestration/graphs/workers/?span=30d",
        "graph worker usage 3h": f"/orchestration/graphs/workers/?worker={worker}&metric=usage&per_gpu=1",
        "graph worker memory 1 week": f"/orchestration/graphs/workers/?worker={worker}&metric=memory&span=7d",
        "graph worker network 1 month": f"/orchestration/graphs/workers/?worker={worker}&metric=network&span=30d",
        "queues page": "/orchestration/queues/",
        "queues rows (by length)": "/orchestration/queues/rows/?sort=-in_queue",
        "queue page with panel": f"/orchestration/queues/?queue={queue_id}",
        "queue panel": f"/orchestration/queues/{queue_id}/panel/",
        "graph queues wait 12h": "/orchestration/graphs/queues/?metric=wait&span=12h",
        "graph queue length 1 month": f"/orchestration/graphs/queues/?metric=length&span=30d&queue={queue_id}",
        "experiments list": "/experiments/",
        "experiments rows (queued, one project)": "/experiments/rows/?status=queued&project=proj-3",
        "experiments rows (search)": "/experiments/rows/?q=sweep-9999",
        "experiment (last in its queue)": f"/experiments/{deep}/",
        "experiment status partial": f"/experiments/{deep}/status/",
        "experiment (running)": f"/experiments/{running}/",
        "experiment log": f"/experiments/{running}/log/",
        "settings": "/settings/",
    }
    out = []
    for label, url in urls.items():
        client.get(url)  # warm
        counter = QueryCounter()
        with connection.execute_wrapper(counter):
            status = client.get(url).status_code
        if status != 200:
            raise SystemExit(f"{url} answered {status}")
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        out.append((label, percentile(times, 50), percentile(times, 95), counter.count))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help="measure the database the last run seeded")
    args = parser.parse_args()
    with services() as svc:
        print(f"machine: {machine()}")
        if args.reuse:
            env = {"DATABASE_URL": svc["DATABASE_URL"].rsplit("/", 1)[0] + "/bench_pages", "REDIS_URL": svc["REDIS_URL"],
                   **BENCH_SETTINGS, "MUSTER_VAR_DIR": str(Path(__file__).parent.parent / "var" / "bench")}  # fmt: skip
        else:
            env, _ = prepared_database(svc, "bench_pages")
            started = time.perf_counter()
            counts = seed(env["DATABASE_URL"])
            print(
                f"seeded in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{k}={v}" for k, v in counts.items())
            )
        env.update({"DEBUG": "false", "ALLOWED_HOSTS": "testserver", "LOG_LEVEL": "WARNING"})
        (Path(env["MUSTER_VAR_DIR"]) / "staticfiles").mkdir(parents=True, exist_ok=True)
        os.environ.update(env)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
        rows = measure(args.rounds)
    base = rows[0][1]
    print(f"\n{'page':44} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'p50/baseline':>13}")
    for label, p50, p95, queries in rows:
        print(f"{label:44} {p50:8.1f} {p95:8.1f} {queries:8d} {p50 / base:13.1f}")
    pages = rows[1:]
    p95s = [r[2] for r in pages]
    slowest = max(pages, key=lambda r: r[2])
    print(
        f"\nRESULT pages p50_ms={percentile([r[1] for r in pages], 50):.1f} p95_ms={percentile(p95s, 95):.1f} "
        f"max_queries={max(r[3] for r in pages)} slowest={slowest[0].replace(' ', '_')}:{slowest[2]:.0f}ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
