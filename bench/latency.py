"""Enqueue -> claimed by an idle long-polling agent, measured at the client, with Redis.

Starts the production server (gunicorn + uvicorn) on PostgreSQL and Redis, registers
two workers on separate queues, and runs two agents from this process: one long-polls
(`claim/?wait=30`), the other polls every 5 seconds as ClearML's agent does. Each round
enqueues one experiment to each queue through the API and times, at the client, from
the enqueue's answer to the claim's answer.

    .venv/bin/python bench/latency.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, percentile, prepared_database, production_server, services
from bench.httpclient import Connection


async def run(url: str, admin_key: str, agent_key: str, rounds: int) -> tuple[list[float], list[float]]:
    admin = Connection(url, {"Authorization": f"Bearer {admin_key}"})
    for name in ("latency-wait", "latency-poll"):
        await admin.request("POST", "/api/v1/queues/", {"name": name})
        agent = Connection(url, {"Authorization": f"Bearer {agent_key}"})
        await agent.request("POST", "/api/v1/workers/", {"name": name, "queues": [name], "cpus": 0})
        await agent.close()
    waits: list[float] = []
    polls: list[float] = []

    async def long_poller(done: asyncio.Event, got: asyncio.Queue[float]) -> None:
        conn = Connection(url, {"Authorization": f"Bearer {agent_key}"})
        while not done.is_set():
            _, body = await conn.request("POST", "/api/v1/workers/latency-wait/claim/?wait=30")
            if body and body.get("attempt"):
                got.put_nowait(time.perf_counter())
        await conn.close()

    async def poller(done: asyncio.Event, got: asyncio.Queue[float]) -> None:
        conn = Connection(url, {"Authorization": f"Bearer {agent_key}"})
        await asyncio.sleep(random.uniform(0, 5))
        while not done.is_set():
            _, body = await conn.request("POST", "/api/v1/workers/latency-poll/claim/")
            if body and body.get("attempt"):
                got.put_nowait(time.perf_counter())
            await asyncio.sleep(5)
        await conn.close()

    done = asyncio.Event()
    got_wait: asyncio.Queue[float] = asyncio.Queue()
    got_poll: asyncio.Queue[float] = asyncio.Queue()
    tasks = [asyncio.create_task(long_poller(done, got_wait)), asyncio.create_task(poller(done, got_poll))]
    await asyncio.sleep(1)
    for _ in range(rounds):
        for queue, got, out in (("latency-wait", got_wait, waits), ("latency-poll", got_poll, polls)):
            # A random moment, so the polling agent's phase is uniform as in real life.
            await asyncio.sleep(random.uniform(0, 5) if queue == "latency-poll" else random.uniform(0.05, 0.3))
            sent = time.perf_counter()  # from the enqueue's sending: its own answer may come after the claim's
            await admin.request("POST", "/api/v1/experiments/", {"name": "ping", "command": ["true"], "queue": queue})
            out.append(await asyncio.wait_for(got.get(), timeout=60) - sent)
    done.set()
    # Wake the long-poller one last time so it can see `done`.
    await admin.request("POST", "/api/v1/experiments/", {"name": "bye", "command": ["true"], "queue": "latency-wait"})
    await asyncio.wait(tasks, timeout=10)
    await admin.close()
    return waits, polls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--server-workers", type=int, default=2)
    args = parser.parse_args()
    with services() as svc:
        env, boot = prepared_database(svc, "muster_bench_latency")
        print(f"config: {machine()}")
        print(
            f"config: server gunicorn+uvicorn workers={args.server_workers}, PostgreSQL, Redis; "
            f"rounds={args.rounds}; long-poll wait=30 s; polling client every 5 s"
        )
        with production_server(env, workers=args.server_workers) as url:
            waits, polls = asyncio.run(run(url, boot["api_key"], boot["agent_key"], args.rounds))
    p50, p99, poll50 = (percentile(waits, 50) * 1000, percentile(waits, 99) * 1000, percentile(polls, 50) * 1000)
    print(f"RESULT latency p50_ms={p50:.1f} p99_ms={p99:.1f} polling_p50_ms={poll50:.1f} ratio={poll50 / p50:.1f}")


if __name__ == "__main__":
    main()
