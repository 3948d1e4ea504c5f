"""The role matrix: every API endpoint, from the URL resolver, against every kind of caller.

A new endpoint without an entry in MATRIX fails `test_every_endpoint_has_an_entry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from experiments.services import experiment_create, experiment_enqueue
from orchestration.actor import SYSTEM, actor_for_user
from orchestration.models import Role
from orchestration.services import apikey_create
from queues.dispatch import dispatch_claim
from queues.services import queue_create
from workers.services import Registration, worker_register

ROLES = ("anon", "user", "other_user", "agent", "other_agent", "admin")
HUMANS = {"user", "other_user", "admin"}
OWNER = {"user", "admin"}
AGENTS = {"agent", "admin"}
ALL = {"user", "other_user", "agent", "admin"}

# (url name, method) -> the roles allowed (everyone else gets 401 when anonymous, else 403).
MATRIX: dict[tuple[str, str], set[str]] = {
    ("experiment-list", "GET"): HUMANS,
    ("experiment-list", "POST"): HUMANS,
    ("experiment-detail", "GET"): HUMANS,
    ("experiment-detail", "PATCH"): OWNER,
    ("experiment-enqueue", "POST"): OWNER,
    ("experiment-dequeue", "POST"): OWNER,
    ("experiment-stop", "POST"): OWNER,
    ("experiment-reset", "POST"): OWNER,
    ("experiment-rerun", "POST"): OWNER,
    ("experiment-clone", "POST"): HUMANS,
    ("experiment-attempts", "GET"): HUMANS,
    ("experiment-logs", "GET"): HUMANS,
    ("queue-list", "GET"): HUMANS,
    ("queue-list", "POST"): {"admin"},
    ("queue-detail", "GET"): HUMANS,
    ("queue-detail", "PATCH"): {"admin"},
    ("queue-detail", "DELETE"): {"admin"},
    ("queue-clear", "POST"): {"admin"},
    ("queue-pause", "POST"): {"admin"},
    ("queue-resume", "POST"): {"admin"},
    ("queue-entries", "GET"): HUMANS,
    ("queue-move", "POST"): OWNER,
    ("queue-dequeue", "POST"): OWNER,
    ("worker-list", "GET"): HUMANS,
    ("worker-list", "POST"): {"agent", "other_agent", "admin"},
    ("worker-detail", "GET"): ALL,
    ("worker-detail", "PATCH"): AGENTS,
    ("worker-detail", "DELETE"): AGENTS,
    ("worker-claim", "POST"): AGENTS,
    ("worker-stats", "GET"): ALL,
    ("queue-stats", "GET"): HUMANS,
    ("experiment-stats", "GET"): HUMANS,
    ("fleet-stats", "GET"): HUMANS,
    ("snapshot-detail", "GET"): {"user", "agent", "other_agent", "admin"},
    ("snapshot-detail", "PUT"): HUMANS,
    ("secret-list", "GET"): HUMANS,
    ("secret-detail", "PUT"): HUMANS,
    ("secret-detail", "DELETE"): HUMANS,
    ("worker-report", "POST"): AGENTS,
    ("attempt-start", "POST"): AGENTS,
    ("attempt-logs", "POST"): AGENTS,
    ("attempt-progress", "POST"): AGENTS,
    ("attempt-finish", "POST"): AGENTS,
    ("key-list", "GET"): HUMANS,
    ("key-list", "POST"): HUMANS,
    ("key-detail", "DELETE"): OWNER,
    ("audit-list", "GET"): {"admin"},
    ("auth-login", "POST"): {"anon", *ROLES},
}


def _api_patterns() -> list[tuple[str, list[str]]]:
    """(name, methods) of every route under /api/v1/, read from the resolver."""
    found: list[tuple[str, list[str]]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern) and route.startswith("api/v1/") and p.name:
                cb = p.callback
                actions = getattr(cb, "actions", None)
                if getattr(cb, "http_methods", None):
                    methods = list(cb.http_methods)  # type: ignore[attr-defined]
                elif actions:
                    methods = [m.upper() for m in actions]
                else:
                    view = cb.view_class  # type: ignore[attr-defined]
                    methods = [
                        m.upper() for m in view.http_method_names if hasattr(view, m) and m not in ("options", "head")
                    ]
                found.append((p.name, methods))

    walk(get_resolver().url_patterns, "")
    return found


ENDPOINTS = sorted({(name, m) for name, methods in _api_patterns() for m in methods})


def test_every_endpoint_has_an_entry() -> None:
    missing = [e for e in ENDPOINTS if e not in MATRIX]
    assert not missing, f"add these endpoints to MATRIX: {missing}"
    stale = [e for e in MATRIX if e not in ENDPOINTS]
    assert not stale, f"MATRIX names endpoints that no longer exist: {stale}"


@dataclass
class World:
    clients: dict[str, APIClient]
    kwargs: dict[str, dict[str, str]]
    bodies: dict[str, dict[str, Any]]


def _client(token: str | None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def world(db: Any) -> World:
    admin = User.objects.create_superuser("root", "", "pw-root-123")
    alice = User.objects.create_user("alice", "", "pw-alice-123")
    bob = User.objects.create_user("bob", "", "pw-bob-123")
    robot = User.objects.create_user("robot", "", "pw-robot-123")
    stranger = User.objects.create_user("stranger", "", "pw-stranger-123")
    keys = {
        "user": apikey_create(actor=SYSTEM, user=alice),
        "other_user": apikey_create(actor=SYSTEM, user=bob),
        "agent": apikey_create(actor=SYSTEM, user=robot, role=Role.AGENT),
        "other_agent": apikey_create(actor=SYSTEM, user=stranger, role=Role.AGENT),
        "admin": apikey_create(actor=SYSTEM, user=admin, role=Role.ADMIN),
    }
    clients = {"anon": _client(None), **{r: _client(k.token) for r, k in keys.items()}}
    queue = queue_create(actor=SYSTEM, name="default")
    agent = actor_for_user(robot, keys["agent"].key)
    worker = worker_register(actor=agent, reg=Registration(name="box:0", queues=[queue.pk], capabilities=31, cpus=8))
    owner = actor_for_user(alice)
    running = experiment_create(actor=owner, spec={"name": "running", "command": ["true"]})
    experiment_enqueue(actor=owner, experiment_id=running.pk, queue_id=queue.pk)
    claim = dispatch_claim(actor=agent, worker=worker)
    assert claim is not None
    queued = experiment_create(actor=owner, spec={"name": "queued", "command": ["true"]})
    experiment_enqueue(actor=owner, experiment_id=queued.pk, queue_id=queue.pk)
    token = claim.attempt.lease_token
    import hashlib

    from experiments.snapshots import snapshot_store

    content = b"a tarball, as far as the matrix cares"
    snap, _ = snapshot_store(actor=owner, sha256=hashlib.sha256(content).hexdigest(), chunks=[content])
    exp_kw = {"pk": queued.pk}
    kwargs = {
        "experiment": exp_kw,
        "queue": {"pk": queue.pk},
        "worker": {"name": worker.name},
        "attempt": {"attempt_id": claim.attempt.pk},
        "key": {"access_key": keys["user"].key.access_key},
        "fleet": {},
        "snapshot": {"sha256": snap.sha256},
        "secret": {"name": "MY_TOKEN"},
    }
    bodies = {
        "experiment-list": {"name": "new", "command": ["true"]},
        "experiment-detail": {"name": "renamed"},
        "experiment-enqueue": {"queue": "default"},
        "queue-list": {"name": "fresh queue"},
        "queue-detail": {"display_name": "Default"},
        "queue-move": {"experiments": [queued.pk], "to": "top"},
        "queue-dequeue": {"experiments": [queued.pk]},
        "worker-list": {"name": "fresh:0", "queues": ["default"]},
        "worker-detail": {"drain": True},
        "worker-report": {"interval_s": 5, "running": [{"attempt": claim.attempt.pk, "token": token}]},
        "attempt-start": {"token": token},
        "attempt-logs": {"token": token, "chunks": [{"seq": 0, "text": "hi"}]},
        "attempt-progress": {"token": token, "iteration": 1},
        "attempt-finish": {"token": token, "outcome": "completed"},
        "key-list": {"name": "another"},
        "auth-login": {"username": "alice", "password": "pw-alice-123"},
        "secret-detail": {"value": "s3cr3t-value"},
    }
    return World(clients=clients, kwargs=kwargs, bodies=bodies)


def _kwargs_for(world: World, name: str) -> dict[str, str]:
    if name.endswith("-list") or name == "auth-login":
        return {}
    return world.kwargs[name.split("-", maxsplit=1)[0]]


@pytest.mark.parametrize(("name", "method"), ENDPOINTS)
@pytest.mark.parametrize("role", ROLES)
def test_role_matrix(world: World, name: str, method: str, role: str) -> None:
    url = reverse(name, kwargs=_kwargs_for(world, name))
    body = world.bodies.get(name, {})
    response = getattr(world.clients[role], method.lower())(url, body, format="json")
    allowed = role in MATRIX[(name, method)]
    if allowed:
        assert response.status_code not in (401, 403), (role, name, method, response.content[:300])
    elif role == "anon":
        assert response.status_code == 401, response.content[:300]
    else:
        assert response.status_code == 403, (role, name, method, response.status_code, response.content[:300])
    assert response.status_code < 500
