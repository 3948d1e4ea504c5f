"""The long-poll claim: woken by an enqueue, a bounded number of checks, an empty answer at the deadline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connection, connections
from django.db.backends import utils
from django.test import AsyncClient

from accounts.actor import SYSTEM, actor_for_user
from accounts.models import Role
from accounts.services import apikey_create
from bench.common import spare_port
from bench.httpclient import Connection
from core.redis import redis_client
from experiments.services import experiment_create, experiment_enqueue
from queues.services import queue_create
from queues.wakeup import HUB
from tests.live import LIVE_SETTINGS
from workers import claim_view
from workers.services import Registration, worker_register

pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]


def _world(n_workers: int = 1) -> dict[str, Any]:
    try:
        return _make_world(n_workers)
    finally:
        connections.close_all()  # made in an executor thread: its connection must not outlive the test


def _make_world(n_workers: int) -> dict[str, Any]:
    admin = User.objects.create_superuser("root", "", "pw-root-123")
    alice = User.objects.create_user("alice", "", "pw-alice-123")
    key = apikey_create(actor=SYSTEM, user=admin, role=Role.AGENT)
    queue = queue_create(actor=SYSTEM, name="default")
    agent = actor_for_user(admin, key.key)
    for i in range(n_workers):
        worker_register(actor=agent, reg=Registration(name=f"w{i}", queues=[queue.pk], capabilities=31, cpus=0))
    return {"token": key.token, "queue": queue, "alice": actor_for_user(alice)}


def _enqueue(world: dict[str, Any]) -> str:
    """Enqueue from another thread, as another request would; its connection is closed after."""

    try:
        exp = experiment_create(actor=world["alice"], spec={"name": "job", "command": ["true"]})
        experiment_enqueue(actor=world["alice"], experiment_id=exp.pk, queue_id=world["queue"].pk)
        return exp.pk
    finally:
        connections.close_all()


async def _claim(client: AsyncClient, token: str, name: str, wait: int) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    r = await client.post(f"/api/v1/workers/{name}/claim/?wait={wait}", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json(), time.monotonic() - start


async def _until_waiting(task: asyncio.Task[Any]) -> None:
    """Until the claim's long-poll has registered its wait (the event an enqueue then wakes)."""
    while not HUB.waiters:
        assert not task.done(), "the claim ended before it waited"
        await asyncio.sleep(0.01)


async def test_an_idle_waiter_is_woken_by_an_enqueue(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 30
    world = await sync_to_async(_world)()
    client = AsyncClient()
    task = asyncio.create_task(_claim(client, world["token"], "w0", 30))
    await _until_waiting(task)
    exp_id = await sync_to_async(_enqueue, thread_sensitive=False)(world)
    status, body, elapsed = await task
    assert status == 200 and body["experiment"]["id"] == exp_id
    assert elapsed < 15, "the waiter was not woken by the enqueue (it waited out its 30 s)"


async def test_an_empty_wait_ends_at_its_deadline_with_nothing(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 1
    world = await sync_to_async(_world)()
    status, body, elapsed = await _claim(AsyncClient(), world["token"], "w0", 1)
    assert status == 200 and body == {"attempt": None, "experiment": None}
    assert 0.9 <= elapsed < 10  # it waited its second, and no longer than a slow machine takes


async def test_wait_is_validated_and_capped(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 0
    world = await sync_to_async(_world)()
    status, body, _ = await _claim(AsyncClient(), world["token"], "w0", 31)
    assert status == 400 and body["error"]["field"] == "wait"
    status, body, elapsed = await _claim(AsyncClient(), world["token"], "w0", 30)
    assert status == 200 and elapsed < 10  # capped by CLAIM_WAIT_MAX_S: far short of the 30 s asked for


@pytest.mark.redis_only
async def test_an_idle_wait_checks_the_database_the_same_number_of_times_for_1s_and_2s(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 2
    world = await sync_to_async(_world)()
    counts = []
    for wait in (1, 2):
        claim_view.STATS["checks"] = 0
        await _claim(AsyncClient(), world["token"], "w0", wait)
        counts.append(claim_view.STATS["checks"])
    assert counts[0] == counts[1] == 1  # one look before waiting; subscribed first, so none at the deadline


@pytest.mark.redis_only
async def test_one_enqueue_wakes_one_of_50_waiters_on_a_real_server(settings: Any) -> None:
    """50 idle agents long-poll a real server process; one enqueue causes at most 2 claim checks."""

    # The server runs in production mode, as before the key check: the keys are digested with a
    # production-grade key, which the server is given too.
    settings.SECRET_KEY = LIVE_SETTINGS["SECRET_KEY"]
    world = await sync_to_async(_world)(50)
    root = Path(__file__).resolve().parent.parent
    db = connection.settings_dict
    port = spare_port()
    env = {
        **os.environ,
        **LIVE_SETTINGS,  # DEBUG off, the same key as the keys above, plain HTTP
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CLAIM_WAIT_MAX_S": "8",
        "COUNTER_FLUSH_S": "0",  # every claim check counted in Redis at once: the test reads the exact count
        "DB_POOL": "false",  # no pooled sessions left behind to block the test database's teardown
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "orchestration.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=root,
        env=env,
    )
    counter = redis_client()
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            try:
                await Connection(f"http://127.0.0.1:{port}").request("GET", "/healthz")
                break
            except OSError:
                continue
        counter.delete(claim_view.CLAIM_CHECKS_KEY)

        async def waiter(i: int) -> Any:
            conn = Connection(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {world['token']}"})
            try:
                return await conn.request("POST", f"/api/v1/workers/w{i}/claim/?wait=8")
            finally:
                await conn.close()

        tasks = [asyncio.create_task(waiter(i)) for i in range(50)]
        for _ in range(200):  # every waiter made its first check and now waits
            if int(counter.get(claim_view.CLAIM_CHECKS_KEY) or 0) >= 50:
                break
            await asyncio.sleep(0.05)
        # Quiet: every waiter checked once and now waits (the count holds still for a second).
        before = -1
        for _ in range(20):
            now = int(counter.get(claim_view.CLAIM_CHECKS_KEY) or 0)
            if now == before:
                break
            before = now
            await asyncio.sleep(1)
        assert before >= 50
        await sync_to_async(_enqueue, thread_sensitive=False)(world)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=5)
        after = int(counter.get(claim_view.CLAIM_CHECKS_KEY) or 0)
        assert [t.result()[1]["attempt"] is not None for t in done] == [True] * len(done) and done
        assert after - before <= 2, f"{after - before} claim checks for one enqueue"
        await asyncio.gather(*tasks)
    finally:
        server.terminate()
        server.wait(timeout=10)
        await sync_to_async(_wait_for_other_sessions_to_end)()


def _wait_for_other_sessions_to_end() -> None:
    """Until the server's sessions are gone (this thread's own and the test's main one aside)."""

    try:
        for _ in range(50):
            with connection.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pytest%%'"
                    " AND backend_type = 'client backend'"
                )
                if cur.fetchone()[0] <= 1:
                    return
            time.sleep(0.1)
    finally:
        connections.close_all()


@pytest.mark.redis_only
@pytest.mark.slow
async def test_an_idle_wait_issues_the_same_sql_for_1s_and_30s(settings: Any, monkeypatch: Any) -> None:
    """No polling: the SQL an idle long-poll runs does not grow with its length (every thread counted)."""

    settings.CLAIM_WAIT_MAX_S = 30
    world = await sync_to_async(_world)()
    seen: list[str] = []
    original = utils.CursorWrapper.execute

    def counting(self: Any, sql: str, params: Any = None) -> Any:
        seen.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(utils.CursorWrapper, "execute", counting)
    counts = []
    for wait in (1, 30):
        # Warm: one-off set-up queries, and the claim's heartbeat touch of a stale worker, are not the wait's.
        await _claim(AsyncClient(), world["token"], "w0", 0)
        seen.clear()
        status, body, elapsed = await _claim(AsyncClient(), world["token"], "w0", wait)
        assert status == 200 and body["attempt"] is None and elapsed >= wait - 0.1
        counts.append(len(seen))
    assert counts[0] == counts[1] and counts[0] <= 12, counts
