"""Shared fixtures: people, keys, API clients and quick ways to make experiments and workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from accounts.actor import SYSTEM, Actor, actor_for_user
from accounts.models import Role
from accounts.services import NewKey, apikey_create
from experiments.models import Experiment
from experiments.services import experiment_create, experiment_enqueue
from queues.models import Queue
from queues.services import queue_create
from tests import live
from workers.models import Worker
from workers.services import Registration, worker_register


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PostgreSQL-only tests (real row locks, SKIP LOCKED) are left out of the SQLite run,
    and SQLite-only ones (its file locking) out of the PostgreSQL run. Browser tests render the
    same pages on either database, so they run once, in the PostgreSQL pass.

    They are deselected, not skipped: neither run claims to have tried them.
    """

    other = {"sqlite_only"} if connection.vendor == "postgresql" else {"postgres_only", "browser", "clearml_agent"}
    if not settings.REDIS_URL:
        other.add("redis_only")
    keep, drop = [], []
    for item in items:
        (drop if any(item.get_closest_marker(m) for m in other) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def admin_user(db: Any) -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw-admin-123")


@pytest.fixture
def alice(db: Any) -> User:
    return User.objects.create_user("alice", "alice@example.com", "pw-alice-123")


@pytest.fixture
def bob(db: Any) -> User:
    return User.objects.create_user("bob", "bob@example.com", "pw-bob-123")


@pytest.fixture
def team(alice: User) -> Group:
    group = Group.objects.create(name="team")
    alice.groups.add(group)
    return group


@pytest.fixture
def admin_actor(admin_user: User) -> Actor:
    return actor_for_user(admin_user)


@pytest.fixture
def alice_actor(alice: User) -> Actor:
    return actor_for_user(alice)


@pytest.fixture
def agent_key(admin_user: User) -> NewKey:
    return apikey_create(actor=SYSTEM, user=admin_user, role=Role.AGENT, name="agent")


@pytest.fixture
def agent_actor(admin_user: User, agent_key: NewKey) -> Actor:
    return actor_for_user(admin_user, agent_key.key)


def client_for(new: NewKey) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {new.token}")
    return client


@pytest.fixture
def admin_api(admin_user: User) -> APIClient:
    return client_for(apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN))


@pytest.fixture
def alice_api(alice: User) -> APIClient:
    return client_for(apikey_create(actor=SYSTEM, user=alice))


@pytest.fixture
def bob_api(bob: User) -> APIClient:
    return client_for(apikey_create(actor=SYSTEM, user=bob))


@pytest.fixture
def agent_api(agent_key: NewKey) -> APIClient:
    return client_for(agent_key)


@pytest.fixture
def queue(db: Any) -> Queue:
    return queue_create(actor=SYSTEM, name="default")


@pytest.fixture
def make_queue(db: Any) -> Callable[..., Queue]:
    def make(name: str, **kw: Any) -> Queue:
        return queue_create(actor=SYSTEM, name=name, **kw)

    return make


@pytest.fixture
def make_experiment(alice_actor: Actor) -> Callable[..., Experiment]:
    def make(actor: Actor | None = None, queue: Queue | None = None, **spec: Any) -> Experiment:
        spec.setdefault("name", "exp")
        spec.setdefault("command", ["python", "-c", "print(1)"])
        exp = experiment_create(actor=actor or alice_actor, spec=spec)
        if queue is not None:
            experiment_enqueue(actor=actor or alice_actor, experiment_id=exp.pk, queue_id=queue.pk)
            exp.refresh_from_db()
        return exp

    return make


@pytest.fixture
def make_worker(agent_actor: Actor) -> Callable[..., Worker]:
    def make(name: str = "host:0", queues: list[Queue] | None = None, **kw: Any) -> Worker:
        kw.setdefault("capabilities", 31)
        kw.setdefault("cpus", 64)
        reg = Registration(
            name=name, queues=[q.pk for q in queues or []], instance_id=kw.pop("instance_id", "i1"), **kw
        )
        return worker_register(actor=agent_actor, reg=reg)

    return make


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Throttle counters live in the cache; each test starts with none."""

    cache.clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test beside a live stack gets the errors its server, celery and agents logged."""
    report = yield
    if report.failed:
        for stack in live.OPEN_STACKS:
            excerpt = live.error_excerpts(stack.dir)
            if excerpt:
                report.sections.append((f"errors logged by {stack.dir.name}", excerpt))
    return report


def pytest_configure(config: pytest.Config) -> None:
    # WhiteNoise warns on every request when the collected-static folder does not exist.
    Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A live Muster for a test module (tests/live.py): server process, celery with beat; agents on demand."""

    yield from live.module_stack(tmp_path_factory, "live")
