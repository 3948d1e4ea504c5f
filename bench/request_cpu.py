"""Server CPU per request: a trivial view, an empty claim, a report and a submit, one at a time and 32 at once.

Starts the production server (gunicorn + uvicorn) on PostgreSQL and Redis and reads the
server processes' CPU time (user + system, from /proc through psutil) around each run, so
the figure is the server's own cost per request, whatever else the machine runs. One at a
time: one server worker, one keep-alive client, 1,000 requests. At once: two server
workers, 32 clients for 8 s (the load where thread contention shows). A submit is a
user's create-and-enqueue (`muster enqueue`), into a queue no worker listens to.

    .venv/bin/python bench/request_cpu.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, percentile, prepared_database, production_server, services
from bench.fleet import report_body
from bench.httpclient import Connection

CLIENTS = 32
KINDS: dict[str, tuple[str, str, Any]] = {  # name: (method, path with {i} for the worker, body)
    "healthz": ("GET", "/healthz", None),
    "claim": ("POST", "/api/v1/workers/cpu-{i}/claim/", None),
    "report": ("POST", "/api/v1/workers/cpu-{i}/report/", report_body(0)),
    "submit": ("POST", "/api/v1/experiments/", {"name": "cpu", "command": ["true"], "queue": "unserved"}),
}
BY_USER = {"submit"}  # sent with the user's key; the rest with the agent's


def server_cpu_s() -> float:
    total = 0.0
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        if "orchestration.asgi:application" in " ".join(proc.info["cmdline"] or []):
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


async def run(
    url: str, keys: dict[str, str], kind: str, clients: int, *, count: int = 0, seconds: float = 0
) -> dict[str, Any]:
    method, path, body = KINDS[kind]
    key = keys["api_key" if kind in BY_USER else "agent_key"]
    done, latencies = 0, list[float]()
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        conn = Connection(url, {"Authorization": f"Bearer {key}"})
        for _ in range(5):  # warm: connection, key cache, prepared statements
            await conn.request(method, path.format(i=i), body)
        await go.wait()
        while (done < count) if count else (time.monotonic() < deadline):
            started = time.perf_counter()
            status, answer = await conn.request(method, path.format(i=i), body)
            assert status in (200, 201), answer
            latencies.append((time.perf_counter() - started) * 1000)
            done += 1
        await conn.close()

    go = asyncio.Event()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(1)
    cpu, started = server_cpu_s(), time.monotonic()
    deadline = started + seconds
    go.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    return {
        "cpu_ms": (server_cpu_s() - cpu) * 1000 / done,
        "per_s": done / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def register(url: str, boot: dict[str, str]) -> None:
    httpx.post(
        url + "/api/v1/queues/", json={"name": "unserved"}, headers={"Authorization": f"Bearer {boot['api_key']}"}
    ).raise_for_status()
    agent_key = boot["agent_key"]
    for i in range(CLIENTS):
        httpx.post(
            url + "/api/v1/workers/",
            json={"name": f"cpu-{i}", "queues": ["default"], "cpus": 8},
            headers={"Authorization": f"Bearer {agent_key}"},
            timeout=30,
        ).raise_for_status()


def main() -> None:
    results: dict[str, dict[str, Any]] = {}
    with services() as svc:
        env, boot = prepared_database(svc, "muster_bench_request_cpu", DB_POOL_MAX="10")
        print(f"config: {machine()}")
        print(
            f"config: one at a time: 1 server worker, 1 client, 1000 requests; at once: 2 workers, {CLIENTS} clients, 8 s"
        )
        with production_server(env, workers=1) as url:
            register(url, boot)
            for kind in KINDS:
                results[f"{kind}_one"] = asyncio.run(run(url, boot, kind, 1, count=1000))
        with production_server(env, workers=2) as url:
            for kind in KINDS:
                results[f"{kind}_32"] = asyncio.run(run(url, boot, kind, CLIENTS, seconds=8))
    for name, r in results.items():
        print(
            f"{name:12s} server cpu {r['cpu_ms']:.2f} ms/request  {r['per_s']:.0f}/s  p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms"
        )
    print("RESULT request_cpu " + " ".join(f"{name}_cpu_ms={r['cpu_ms']:.2f}" for name, r in results.items()))


if __name__ == "__main__":
    main()
