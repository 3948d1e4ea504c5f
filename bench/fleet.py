"""A fleet: 1,000 idle long-pollers and 1,000 workers reporting every 5 s, then saturating reports.

Starts the production server (gunicorn + uvicorn) on PostgreSQL and Redis. Phase one holds
1,000 claim long-polls open (`?wait=30`, re-issued when they end, their phases spread) while 1,000 other workers
report every 5 s with a realistic body (8 cores, 2 GPUs, one running attempt's stats), and
a probe agent long-polls a queue that gets one experiment every half second: report
latency and enqueue->claim latency are measured at the client, from 15 s after the fleet
starts (three report intervals) for 30 s; the start itself (every agent's first claim and
report within 5 s, as after a restart) is printed apart. Phase two saturates the
report endpoint with 32 concurrent clients, then the same 32 hammer a trivial Django view
(`/healthz`) in the same run: `ratio` = reports/s / trivial_view/s.

    .venv/bin/python bench/fleet.py [--pollers 1000] [--reporters 1000] [--seconds 30] [--warmup 15]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, percentile, prepared_database, production_server, services
from bench.httpclient import Connection


def raise_open_files() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def report_body(i: int) -> dict[str, object]:
    return {
        "interval_s": 5,
        "running": [],
        "machine": {
            "cpu_percent": random.uniform(0, 100),
            "cpu_per_core": [random.uniform(0, 100) for _ in range(8)],
            "memory_used_mb": 20000.0, "memory_free_mb": 44000.0,
            "gpus": [{"index": g, "util": random.uniform(0, 100), "memory_used_mb": 30000.0, "memory_free_mb": 50000.0,
                      "temperature_c": 60.0, "ecc_errors": 0} for g in range(2)],
            "network_rx_bps": 1e6, "network_tx_bps": 2e5, "disk_read_bps": 1e5, "disk_write_bps": 3e5,
            "disk_free_mb": 500000.0,
        },
    }  # fmt: skip


async def setup(url: str, admin_key: str, agent_key: str, pollers: int, reporters: int) -> None:
    admin = Connection(url, {"Authorization": f"Bearer {admin_key}"})
    for name in ("fleet-idle", "fleet-probe", "fleet-busy"):
        await admin.request("POST", "/api/v1/queues/", {"name": name})
    await admin.close()
    names = [(f"idle-{i}", "fleet-idle") for i in range(pollers)]
    names += [(f"rep-{i}", "fleet-busy") for i in range(reporters)]
    names += [("probe", "fleet-probe"), *[(f"sat-{i}", "fleet-busy") for i in range(32)]]
    todo: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in names:
        todo.put_nowait(item)

    async def registrar() -> None:
        conn = Connection(url, {"Authorization": f"Bearer {agent_key}"})
        while not todo.empty():
            name, queue = todo.get_nowait()
            body = {"name": name, "queues": [queue], "cpus": 8, "memory_mb": 64000,
                    "gpu_slots": [{"index": 0}, {"index": 1}]}  # fmt: skip
            status, answer = await conn.request("POST", "/api/v1/workers/", body)
            assert status == 201, answer
        await conn.close()

    await asyncio.gather(*(registrar() for _ in range(16)))


async def fleet_phase(  # noqa: PLR0917
    url: str, admin_key: str, agent_key: str, pollers: int, reporters: int, seconds: float, warmup: float
) -> tuple[list[float], list[float], dict[str, int], float, list[float], list[float]]:
    auth = {"Authorization": f"Bearer {agent_key}"}
    stop = asyncio.Event()
    report_ms: list[float] = []
    claim_ms: list[float] = []
    enqueue_ms: list[float] = []  # the enqueue request's own answer, printed apart (part of claim_ms)
    errors = {"report": 0, "claim": 0}

    async def poller(i: int) -> None:
        conn = Connection(url, auth)
        await asyncio.sleep(random.uniform(0, 3))
        # Agents that started at different times end their waits at different times: the first
        # wait of each is 1 to 30 s, so 1,000 waits do not all end (and re-claim) in the same second.
        wait = random.randint(1, 30)
        while not stop.is_set():
            status, _ = await conn.request("POST", f"/api/v1/workers/idle-{i}/claim/?wait={wait}")
            wait = 30
            if status != 200:
                errors["claim"] += 1
                await asyncio.sleep(1)
        await conn.close()

    async def reporter(i: int) -> None:
        conn = Connection(url, auth)
        await asyncio.sleep(random.uniform(0, 5))
        while not stop.is_set():
            started = time.perf_counter()
            status, _ = await conn.request("POST", f"/api/v1/workers/rep-{i}/report/", report_body(i))
            if status == 200:
                report_ms.append((time.perf_counter() - started) * 1000)
            else:
                errors["report"] += 1
            await asyncio.sleep(max(0.0, 5 - (time.perf_counter() - started)))
        await conn.close()

    got: asyncio.Queue[float] = asyncio.Queue()

    async def probe() -> None:
        conn = Connection(url, auth)
        while not stop.is_set():
            _, body = await conn.request("POST", "/api/v1/workers/probe/claim/?wait=30")
            if body and body.get("attempt"):
                got.put_nowait(time.perf_counter())
                await conn.request("POST", f"/api/v1/attempts/{body['attempt']['id']}/finish/",
                                   {"token": body["attempt"]["token"], "outcome": "completed"})  # fmt: skip
        await conn.close()

    tasks = [asyncio.create_task(poller(i)) for i in range(pollers)]
    tasks += [asyncio.create_task(reporter(i)) for i in range(reporters)]
    tasks.append(asyncio.create_task(probe()))
    # The start: 1,000 first claims and 1,000 first reports within 5 s, as after a server restart.
    # Measured apart; the run measures the steady fleet once three report intervals have passed.
    await asyncio.sleep(warmup)
    start_ms = list(report_ms)
    report_ms.clear()
    admin = Connection(url, {"Authorization": f"Bearer {admin_key}"})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(random.uniform(0.3, 0.7))
        while not got.empty():  # a claim answered after its round timed out belongs to no round
            got.get_nowait()
        sent = time.perf_counter()  # from the enqueue's sending: its own answer may come after the claim's
        await admin.request(
            "POST", "/api/v1/experiments/", {"name": "probe", "command": ["true"], "queue": "fleet-probe"}
        )
        enqueue_ms.append((time.perf_counter() - sent) * 1000)
        try:
            claim_ms.append((await asyncio.wait_for(got.get(), timeout=30) - sent) * 1000)
        except TimeoutError:
            errors["claim"] += 1
    measured_reports = len(report_ms)
    stop.set()
    await admin.request("POST", "/api/v1/experiments/", {"name": "bye", "command": ["true"], "queue": "fleet-probe"})
    await admin.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return report_ms, claim_ms, errors, measured_reports / seconds, start_ms, enqueue_ms


async def saturate(url: str, agent_key: str, seconds: float, *, trivial: bool) -> float:
    auth = {"Authorization": f"Bearer {agent_key}"}
    done = 0
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal done
        conn = Connection(url, auth)
        while time.monotonic() < deadline:
            if trivial:
                status, _ = await conn.request("GET", "/healthz")
            else:
                status, _ = await conn.request("POST", f"/api/v1/workers/sat-{i}/report/", report_body(i))
            done += status == 200
        await conn.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(32)))
    return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pollers", type=int, default=1000)
    parser.add_argument("--reporters", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--warmup", type=float, default=15, help="seconds from the fleet's start to the measurement")
    parser.add_argument("--server-workers", type=int, default=2)
    args = parser.parse_args()
    files = raise_open_files()  # the server inherits it
    with services() as svc:
        env, boot = prepared_database(svc, "muster_bench_fleet", DB_POOL_MAX="10")
        print(f"config: {machine()}; open files {files}")
        print(
            f"config: server gunicorn+uvicorn workers={args.server_workers}, PostgreSQL, Redis; "
            f"{args.pollers} idle long-pollers, {args.reporters} workers reporting every 5 s, "
            f"{args.seconds:.0f} s measured after {args.warmup:.0f} s; saturation: 32 clients, 10 s each"
        )
        with production_server(env, workers=args.server_workers) as url:
            asyncio.run(setup(url, boot["api_key"], boot["agent_key"], args.pollers, args.reporters))
            report_ms, claim_ms, errors, fleet_rate, start_ms, enqueue_ms = asyncio.run(
                fleet_phase(
                    url, boot["api_key"], boot["agent_key"], args.pollers, args.reporters, args.seconds, args.warmup
                )
            )
            reports_per_s = asyncio.run(saturate(url, boot["agent_key"], 10, trivial=False))
            trivial_per_s = asyncio.run(saturate(url, boot["agent_key"], 10, trivial=True))
    print(
        f"fleet start (first {args.warmup:.0f} s, not in RESULT): {len(start_ms)} reports, "
        f"report p50 {percentile(start_ms, 50):.1f} ms p99 {percentile(start_ms, 99):.1f} ms"
    )
    print(
        f"fleet phase: {len(report_ms)} reports ({fleet_rate:.0f}/s), report p50 {percentile(report_ms, 50):.1f} ms; "
        f"{len(claim_ms)} probe claims, their enqueue request's own answer p50 {percentile(enqueue_ms, 50):.1f} ms; "
        f"errors {errors}"
    )
    print(
        f"RESULT fleet report_p99_ms={percentile(report_ms, 99):.1f} claim_p50_ms={percentile(claim_ms, 50):.1f} "
        f"reports_per_s={reports_per_s:.0f} trivial_view_per_s={trivial_per_s:.0f} "
        f"ratio={reports_per_s / trivial_per_s:.2f}"
    )


if __name__ == "__main__":
    main()
