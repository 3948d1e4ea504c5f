"""The long-poll claim: woken by an enqueue, a bounded number of checks, an empty answer at the deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.test import AsyncClient

from experiments.services import experiment_create, experiment_enqueue
from orchestration.actor import SYSTEM, actor_for_user
from orchestration.models import Role
from orchestration.services import apikey_create
from queues.services import queue_create
from workers import claim_view
from workers.services import Registration, worker_register

pytestmark = [pytest.mark.anyio, pytest.mark.django_db(transaction=True)]


def _world(n_workers: int = 1) -> dict[str, Any]:
    admin = User.objects.create_superuser("root", "", "pw-root-123")
    alice = User.objects.create_user("alice", "", "pw-alice-123")
    key = apikey_create(actor=SYSTEM, user=admin, role=Role.AGENT)
    queue = queue_create(actor=SYSTEM, name="default")
    agent = actor_for_user(admin, key.key)
    for i in range(n_workers):
        worker_register(actor=agent, reg=Registration(name=f"w{i}", queues=[queue.pk], capabilities=31, cpus=0))
    return {"token": key.token, "queue": queue, "alice": actor_for_user(alice)}


def _enqueue(world: dict[str, Any]) -> str:
    exp = experiment_create(actor=world["alice"], spec={"name": "job", "command": ["true"]})
    experiment_enqueue(actor=world["alice"], experiment_id=exp.pk, queue_id=world["queue"].pk)
    return exp.pk


async def _claim(client: AsyncClient, token: str, name: str, wait: int) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    r = await client.post(f"/api/v1/workers/{name}/claim/?wait={wait}", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json(), time.monotonic() - start


async def test_an_idle_waiter_is_woken_by_an_enqueue(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 5
    world = await sync_to_async(_world)()
    client = AsyncClient()
    task = asyncio.create_task(_claim(client, world["token"], "w0", 5))
    await asyncio.sleep(0.5)
    exp_id = await sync_to_async(_enqueue, thread_sensitive=False)(world)
    status, body, elapsed = await task
    assert status == 200 and body["experiment"]["id"] == exp_id
    assert elapsed < 3, "the waiter was not woken by the enqueue"


async def test_an_empty_wait_ends_at_its_deadline_with_nothing(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 1
    world = await sync_to_async(_world)()
    status, body, elapsed = await _claim(AsyncClient(), world["token"], "w0", 1)
    assert status == 200 and body == {"attempt": None, "experiment": None}
    assert 0.9 <= elapsed < 3


async def test_wait_is_validated_and_capped(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 0
    world = await sync_to_async(_world)()
    status, body, _ = await _claim(AsyncClient(), world["token"], "w0", 31)
    assert status == 400 and body["error"]["field"] == "wait"
    status, body, elapsed = await _claim(AsyncClient(), world["token"], "w0", 30)
    assert status == 200 and elapsed < 1  # capped by CLAIM_WAIT_MAX_S


@pytest.mark.redis_only
async def test_an_idle_wait_checks_the_database_the_same_number_of_times_for_1s_and_2s(settings: Any) -> None:
    settings.CLAIM_WAIT_MAX_S = 2
    world = await sync_to_async(_world)()
    counts = []
    for wait in (1, 2):
        claim_view.STATS["checks"] = 0
        await _claim(AsyncClient(), world["token"], "w0", wait)
        counts.append(claim_view.STATS["checks"])
    assert counts[0] == counts[1] == 2  # one look before waiting, one at the deadline
