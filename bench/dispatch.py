"""Claims through HTTP: 32 concurrent agents against the production server on PostgreSQL.

Starts gunicorn with uvicorn workers on a fresh PostgreSQL database, pre-fills three
queues, and runs 32 claimers from a separate process until the queues are empty. In the
same run, a raw-SQL loop (32 threads, psycopg, no Django, no HTTP) performs the same
transaction (lock the worker, sum its running attempts, read its queues, take one entry)
on a second, identical fill: the ratio of the two is the figure that survives a noisy
machine. Duplicates and losses are computed from database state afterwards.

    .venv/bin/python bench/dispatch.py [--experiments 6000] [--claimers 32] [--server-workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg

from bench.common import BENCH_SETTINGS, PY, machine, percentile, prepared_database, production_server, services
from bench.httpclient import Connection

QUEUES = ("bench-a", "bench-b", "bench-c")


def prefill(db_url: str, n: int, tag: str) -> None:
    """n queued experiments spread over the three queues, made in SQL."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        ids = [
            r[0] for r in conn.execute("SELECT id FROM queues_queue WHERE name = ANY(%s) ORDER BY name", [list(QUEUES)])
        ]
        owner = conn.execute("SELECT id FROM auth_user ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        conn.execute(
            """
            INSERT INTO experiments_experiment (id, name, project, tags, owner_id, command, script, working_dir,
              repository, branch, commit, diff, entry_point, snapshot, requirements, python_version,
              container_image, container_args, setup_script, env, secret_env, parameters, gpus, gpu_type, cpus,
              memory_mb, priority, retry_policy, stop_signal, stop_grace_s, status, status_reason, status_message,
              enqueue_status, queue_id, retry_count, created_at, updated_at, queued_at, last_metrics, runtime)
            SELECT md5(%(tag)s || n), %(tag)s || n, 'bench', '[]', %(owner)s, '["true"]', '', '', '', '', '', '', '',
              '', '', '', '', '[]', '', '{}', '{}', '{}', 0, '', 1, 0, (n %% 3), '{}', 'SIGTERM', 60, 'queued',
              '', '', 'created', (%(queues)s::text[])[1 + n %% 3], 0, now(), now(), now(), '{}', '{}'
            FROM generate_series(0, %(n)s - 1) AS n
            """,
            {"tag": tag, "owner": owner, "queues": ids, "n": n},
        )
        conn.execute(
            """
            INSERT INTO queues_queueentry (queue_id, experiment_id, priority, position, added_at, gpus, gpu_type,
              cpus, memory_mb, needs)
            SELECT (%(queues)s::text[])[1 + n %% 3], md5(%(tag)s || n), (n %% 3), nextval('queues_entry_position_seq'),
              now(), 0, '', 1, 0, 1
            FROM generate_series(0, %(n)s - 1) AS n
            """,
            {"tag": tag, "queues": ids, "n": n},
        )


async def client(url: str, key: str, names: list[str]) -> dict[str, object]:
    """One process, one task and one keep-alive connection per agent: claim until empty."""
    latencies: list[float] = []
    claimed: list[str] = []
    errors: list[str] = []

    async def agent(name: str) -> None:
        conn = Connection(url, {"Authorization": f"Bearer {key}"})
        try:
            while True:
                t0 = time.perf_counter()
                status, body = await conn.request("POST", f"/api/v1/workers/{name}/claim/")
                elapsed = time.perf_counter() - t0
                if status != 200:
                    errors.append(f"{status} {str(body)[:200]}")
                    return
                if body["attempt"] is None:
                    return  # the final empty answer is not a claim
                latencies.append(elapsed)
                claimed.append(body["experiment"]["id"])
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(agent(n) for n in names))
    return {"latencies": latencies, "claimed": claimed, "errors": errors, "elapsed": time.perf_counter() - start}


def _take_statement(db_url: str) -> str:
    """The server's take, exactly: built from the models (workers/claim_sql.py: take_sql), so
    this process sets Django up with production's settings against the bench's database."""
    import django  # noqa: PLC0415 - this bench's parent process never loads Django

    os.environ.update({"DJANGO_SETTINGS_MODULE": "orchestration.settings", "DATABASE_URL": db_url, "DB_POOL": "false"})
    os.environ.update(BENCH_SETTINGS)
    django.setup()
    from workers.claim_sql import take_sql  # noqa: PLC0415 - models load only after django.setup()

    return take_sql()


def raw_sql_claims(db_url: str, worker_ids: list[int], n_expected: int) -> tuple[float, int]:
    """The same transaction as an HTTP claim, straight from psycopg, 32 threads.

    Lock the worker row with its usage and queues, take from the first queue that has a
    fitting entry: the same two statements the server runs, then commit.
    """
    take_sql = _take_statement(db_url)  # sets Django up in this process
    from workers.claim_sql import CLAIM_FIELDS, lock_worker_sql  # noqa: PLC0415 - after django.setup()

    lock_sql = lock_worker_sql(CLAIM_FIELDS, "w.id = %s")  # with the serving rule, as the server's

    done = [0]
    lock = threading.Lock()

    def loop(worker_id: int) -> None:
        with psycopg.connect(db_url) as conn:
            while True:
                with conn.transaction():
                    locked = conn.execute(lock_sql, [worker_id]).fetchone()
                    queues = json.loads(locked[-1]) if locked else []
                    got = None
                    for queue_id, _, _, _ in queues:
                        params = {
                            "queue": queue_id, "gpus": 1e18, "cpus": 1e18, "memory": 2**62, "missing": 0,
                            "any_model": True, "models": [], "attempt": uuid.uuid4().hex, "worker": worker_id,
                            "worker_name": f"w{worker_id}", "token": uuid.uuid4().hex, "now": "now",
                            "actor": None, "actor_label": "bench",
                        }  # fmt: skip
                        params["now"] = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
                        got = conn.execute(take_sql, params).fetchone()
                        if got:
                            break
                if not got:
                    return
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=loop, args=(w,)) for w in worker_ids]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return done[0] / elapsed, done[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experiments", type=int, default=6000)
    parser.add_argument("--claimers", type=int, default=32)
    parser.add_argument("--server-workers", type=int, default=max(2, (os.cpu_count() or 2) * 2))
    parser.add_argument("--client", nargs=3, metavar=("URL", "KEY", "NAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        url, key, names = args.client
        print(json.dumps(asyncio.run(client(url, key, names.split(",")))))
        return

    with services() as svc:
        env, boot = prepared_database(
            svc, "muster_bench_dispatch", DB_POOL_MAX=os.environ.get("BENCH_DB_POOL_MAX", "4")
        )
        db_url = env["DATABASE_URL"]
        admin_h = {"Authorization": f"Bearer {boot['api_key']}"}
        agent_h = {"Authorization": f"Bearer {boot['agent_key']}"}
        names = [f"bench-{i}" for i in range(args.claimers)]
        print(f"config: {machine()}")
        print(
            f"config: server gunicorn+uvicorn workers={args.server_workers}, PostgreSQL (pooled), Redis; "
            f"claimers={args.claimers} in one separate process; experiments={args.experiments} in 3 queues"
        )
        with production_server(env, workers=args.server_workers) as url:
            for q in QUEUES:
                httpx.post(url + "/api/v1/queues/", json={"name": q}, headers=admin_h).raise_for_status()
            for i, name in enumerate(names):
                order = list(QUEUES[i % 3 :] + QUEUES[: i % 3])
                httpx.post(
                    url + "/api/v1/workers/",
                    json={"name": name, "queues": order, "cpus": 0},
                    headers=agent_h,
                    timeout=30,
                ).raise_for_status()
            prefill(db_url, args.experiments, "http-")
            out = subprocess.run(
                [PY, __file__, "--client", url, boot["agent_key"], ",".join(names)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])

        with psycopg.connect(db_url) as conn:
            dup = conn.execute(
                "SELECT count(*) FROM (SELECT experiment_id FROM experiments_attempt "
                "GROUP BY experiment_id HAVING count(*) > 1) d"
            ).fetchone()[0]  # type: ignore[index]
            lost = conn.execute(
                "SELECT count(*) FROM experiments_experiment x WHERE x.name LIKE 'http-%%' AND NOT ("
                " (x.status = 'in_progress' AND EXISTS (SELECT 1 FROM experiments_attempt a WHERE a.id = x.current_attempt_id))"
                " OR (x.status = 'queued' AND EXISTS (SELECT 1 FROM queues_queueentry e WHERE e.experiment_id = x.id)))"
            ).fetchone()[0]  # type: ignore[index]
            remaining = conn.execute("SELECT count(*) FROM queues_queueentry").fetchone()[0]  # type: ignore[index]
            worker_ids = [r[0] for r in conn.execute("SELECT id FROM workers_worker ORDER BY id")]
        claimed = result["claimed"]
        lat = result["latencies"]
        claims_per_s = len(claimed) / result["elapsed"]
        dup_http = len(claimed) - len(set(claimed))

        prefill(db_url, args.experiments, "sql-")
        sql_per_s, sql_done = raw_sql_claims(db_url, worker_ids, args.experiments)

        print(
            f"http: {len(claimed)} claims in {result['elapsed']:.2f}s, errors={len(result['errors'])}, "
            f"left in queues={remaining}"
        )
        print(f"sql:  {sql_done} claims, {sql_per_s:.0f}/s")
        if result["errors"]:
            print("first errors:", result["errors"][:3])
        print(
            f"RESULT dispatch claims_per_s={claims_per_s:.0f} p50_ms={percentile(lat, 50) * 1000:.1f} "
            f"p99_ms={percentile(lat, 99) * 1000:.1f} duplicates={dup + dup_http} lost={lost} "
            f"sql_claims_per_s={sql_per_s:.0f} ratio={claims_per_s / sql_per_s:.2f}"
        )


if __name__ == "__main__":
    main()
